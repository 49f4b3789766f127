package ociimage

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DirOptions says how WriteDirLayer turns a tree into a layer.
type DirOptions struct {
	// Exclude, when set, is asked about every entry by its slash-separated path relative to
	// the tree's root ("usr/bin/ls"); an excluded directory is left out with all below it.
	Exclude func(name string, isDir bool) bool
	// RootOwner gives every entry owner and group 0; otherwise the numeric owner and group
	// on disk are kept (never names).
	RootOwner bool
	// ModTime, when not zero, is every entry's modification time; otherwise the time on disk
	// (in whole seconds) is kept.
	ModTime time.Time
}

// WriteDirLayer writes the tree under dir as a layer tar at dst: each directory's entries in
// name order, parents before children, the root itself left out. It keeps modes (setuid,
// setgid and sticky bits too), symlinks, hard links (as links to the first name in that
// order), device nodes, FIFOs and security.capability extended attributes; a socket is an
// error. It fails when the tree cannot be read or dst cannot be written.
func WriteDirLayer(dst, dir string, opt DirOptions) (Layer, error) {
	lw, err := newLayerWriter(dst)
	if err != nil {
		return Layer{}, err
	}
	defer lw.abort()
	links := map[[2]uint64]string{} // (dev, inode) -> first name
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		name := filepath.ToSlash(rel)
		if opt.Exclude != nil && opt.Exclude(name, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return lw.addFromDisk(p, name, info, opt, links)
	})
	if err != nil {
		return Layer{}, fmt.Errorf("layer from %s: %w", dir, err)
	}
	return lw.finish()
}

func (lw *layerWriter) addFromDisk(p, name string, info fs.FileInfo, opt DirOptions, links map[[2]uint64]string) error {
	if info.Mode()&fs.ModeSocket != 0 {
		return fmt.Errorf("%s: a socket cannot go in a layer", p)
	}
	target := ""
	if info.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(p)
		if err != nil {
			return err
		}
		target = t
	}
	hdr, err := tar.FileInfoHeader(info, target)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	hdr.Name = name
	if info.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uname, hdr.Gname = "", ""
	hdr.AccessTime, hdr.ChangeTime = time.Time{}, time.Time{}
	hdr.ModTime = info.ModTime().Truncate(time.Second)
	if !opt.ModTime.IsZero() {
		hdr.ModTime = opt.ModTime
	}
	if opt.RootOwner {
		hdr.Uid, hdr.Gid = 0, 0
	}
	st, _ := info.Sys().(*syscall.Stat_t)
	if info.Mode().IsRegular() && st != nil && st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, ok := links[key]; ok {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			return lw.tw.WriteHeader(hdr)
		}
		links[key] = name
	}
	if info.Mode().IsRegular() {
		if capability, err := getCapability(p); err != nil {
			return err
		} else if capability != nil {
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.capability": string(capability)}
		}
	}
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	return lw.copyFile(p, hdr.Size)
}

// getCapability returns the security.capability attribute of a file, or nil.
func getCapability(p string) ([]byte, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, "security.capability", buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: reading security.capability: %w", p, err)
	}
	return buf[:n], nil
}

// File is one entry of a layer built by WriteFilesLayer.
type File struct {
	Name string      // path in the image, e.g. /usr/local/bin/svcproxy
	Src  string      // file on disk whose content it gets; or
	Data []byte      // its content, when Src is empty
	Dir  bool        // a directory (Src and Data unused)
	Mode fs.FileMode // permission (and setuid, setgid, sticky) bits; 0 means Src's, or 0644 for Data, 0755 for Dir
}

// WriteFilesLayer writes files as a layer tar at dst, with every directory above them
// (mode 0755) that files does not list itself; every entry has owner and group 0 and
// modification time mtime, entries are in name order. It fails on a name listed twice, a
// Src that is not a regular file (symlinks are followed), or when dst cannot be written.
func WriteFilesLayer(dst string, files []File, mtime time.Time) (Layer, error) {
	entries := map[string]File{}
	for _, f := range files {
		name := strings.TrimPrefix(path.Clean("/"+f.Name), "/")
		if name == "" {
			return Layer{}, fmt.Errorf("file without a name")
		}
		if _, dup := entries[name]; dup {
			return Layer{}, fmt.Errorf("%s listed twice", f.Name)
		}
		entries[name] = f
	}
	for name := range entries {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if e, ok := entries[d]; !ok {
				entries[d] = File{Name: d, Dir: true}
			} else if !e.Dir {
				return Layer{}, fmt.Errorf("%s is a file and the directory of %s", d, name)
			}
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)

	lw, err := newLayerWriter(dst)
	if err != nil {
		return Layer{}, err
	}
	defer lw.abort()
	for _, name := range names {
		if err := lw.addFile(name, entries[name], mtime); err != nil {
			return Layer{}, err
		}
	}
	return lw.finish()
}

func (lw *layerWriter) addFile(name string, f File, mtime time.Time) error {
	hdr := &tar.Header{Name: name, ModTime: mtime, Mode: tarMode(f.Mode)}
	switch {
	case f.Dir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		if f.Mode == 0 {
			hdr.Mode = 0o755
		}
		return lw.tw.WriteHeader(hdr)
	case f.Src == "":
		hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(f.Data))
		if f.Mode == 0 {
			hdr.Mode = 0o644
		}
		if err := lw.tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err := lw.tw.Write(f.Data)
		return err
	}
	info, err := os.Stat(f.Src)
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", f.Src)
	}
	hdr.Typeflag, hdr.Size = tar.TypeReg, info.Size()
	if f.Mode == 0 {
		hdr.Mode = tarMode(info.Mode())
	}
	if err := lw.tw.WriteHeader(hdr); err != nil {
		return err
	}
	return lw.copyFile(f.Src, info.Size())
}

// tarMode returns the permission, setuid, setgid and sticky bits of m as tar stores them.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	for bit, v := range map[fs.FileMode]int64{fs.ModeSetuid: 0o4000, fs.ModeSetgid: 0o2000, fs.ModeSticky: 0o1000} {
		if m&bit != 0 {
			mode |= v
		}
	}
	return mode
}

// layerWriter writes a tar to a temporary file beside dst, hashing it on the way.
type layerWriter struct {
	dst  string
	f    *os.File
	h    hash.Hash
	n    *countWriter
	tw   *tar.Writer
	done bool
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func newLayerWriter(dst string) (*layerWriter, error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return nil, err
	}
	lw := &layerWriter{dst: dst, f: f, h: sha256.New(), n: &countWriter{}}
	lw.tw = tar.NewWriter(io.MultiWriter(f, lw.h, lw.n))
	return lw, nil
}

func (lw *layerWriter) copyFile(p string, size int64) error {
	src, err := os.Open(p)
	if err != nil {
		return err
	}
	defer src.Close()
	if n, err := io.Copy(lw.tw, src); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	} else if n != size {
		return fmt.Errorf("%s changed while read: %d bytes, want %d", p, n, size)
	}
	return nil
}

// finish closes the tar and renames it to dst.
func (lw *layerWriter) finish() (Layer, error) {
	if err := lw.tw.Close(); err != nil {
		return Layer{}, err
	}
	if err := lw.f.Close(); err != nil {
		return Layer{}, err
	}
	if err := os.Chmod(lw.f.Name(), 0o644); err != nil {
		return Layer{}, err
	}
	if err := os.Rename(lw.f.Name(), lw.dst); err != nil {
		return Layer{}, err
	}
	lw.done = true
	return Layer{Path: lw.dst, Digest: "sha256:" + hex.EncodeToString(lw.h.Sum(nil)), Size: lw.n.n}, nil
}

// abort removes the temporary file unless finish succeeded.
func (lw *layerWriter) abort() {
	if !lw.done {
		lw.f.Close()
		os.Remove(lw.f.Name())
	}
}
