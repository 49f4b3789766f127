package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/test/realnode/ociimage"
)

// Base is the Debian root file system the svcproxy image starts from in place of the
// Dockerfile's FROM image, which no registry here serves: `debootstrap --variant=minbase` of
// Release from Mirror with Packages included (their maintainer scripts run, so iptables'
// alternative is Debian's default, iptables-nft), then trimmed as debian:*-slim is.
type Base struct {
	Release  string
	Mirror   string
	Packages []string
}

// baseRecipe names how a base is made; changing it (or slimExclude) must change the cache key.
const baseRecipe = "debootstrap --variant=minbase, slim v1"

// key names the base's cache directory: a hash of the recipe, release, mirror and packages.
func (b Base) key() string {
	pkgs := append([]string(nil), b.Packages...)
	sort.Strings(pkgs)
	sum := sha256.Sum256([]byte(strings.Join([]string{baseRecipe, b.Release, b.Mirror, strings.Join(pkgs, ",")}, "\n")))
	return hex.EncodeToString(sum[:8])
}

func (b Base) comment() string {
	return fmt.Sprintf("debootstrap --variant=minbase --include=%s %s %s (slim)", strings.Join(b.Packages, ","), b.Release, b.Mirror)
}

// baseRecord is what a cache directory holds beside layer.tar, written last.
type baseRecord struct {
	Base
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Layer returns the base's layer tar: the one in cacheDir/base-<key>/ when an earlier run left
// it there, else a new one built with debootstrap (as root) and kept there. debootstrap's
// output goes to cacheDir/base-<key>.log, and its warnings, errors and success line to
// progress too. It fails when debootstrap fails or the cache cannot be written.
func (b Base) Layer(cacheDir string, progress io.Writer) (ociimage.Layer, error) {
	dir := filepath.Join(cacheDir, "base-"+b.key())
	if rec, err := os.ReadFile(filepath.Join(dir, "layer.json")); err == nil {
		var r baseRecord
		if err := json.Unmarshal(rec, &r); err != nil {
			return ociimage.Layer{}, fmt.Errorf("%s/layer.json: %w", dir, err)
		}
		fmt.Fprintf(progress, "mkimage: base from the cache: %s (%s)\n", dir, b.comment())
		return ociimage.Layer{Path: filepath.Join(dir, "layer.tar"), Digest: r.Digest, Size: r.Size, Comment: b.comment()}, nil
	}

	tmp := dir + ".tmp"
	if err := removeAllUnmounted(tmp); err != nil {
		return ociimage.Layer{}, err
	}
	defer removeAllUnmounted(tmp)
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return ociimage.Layer{}, err
	}
	logPath := dir + ".log"
	log, err := os.Create(logPath)
	if err != nil {
		return ociimage.Layer{}, err
	}
	defer log.Close()
	fmt.Fprintf(progress, "mkimage: building the base (log: %s): %s\n", logPath, b.comment())
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(b.Packages, ","), b.Release, rootfs, b.Mirror)
	cmd.Stdout = io.MultiWriter(log, debootstrapProgress{progress})
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return ociimage.Layer{}, fmt.Errorf("debootstrap: %w (log: %s)", err, logPath)
	}
	l, err := ociimage.WriteDirLayer(filepath.Join(tmp, "layer.tar"), rootfs, ociimage.DirOptions{Exclude: slimExclude})
	if err != nil {
		return ociimage.Layer{}, err
	}
	if err := removeAllUnmounted(rootfs); err != nil {
		return ociimage.Layer{}, err
	}
	rec, err := json.MarshalIndent(baseRecord{Base: b, Digest: l.Digest, Size: l.Size}, "", "  ")
	if err != nil {
		return ociimage.Layer{}, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "layer.json"), append(rec, '\n'), 0o644); err != nil {
		return ociimage.Layer{}, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return ociimage.Layer{}, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return ociimage.Layer{}, err
	}
	return ociimage.Layer{Path: filepath.Join(dir, "layer.tar"), Digest: l.Digest, Size: l.Size, Comment: b.comment()}, nil
}

// debootstrapProgress passes debootstrap's warnings, errors and success line on.
type debootstrapProgress struct{ w io.Writer }

func (p debootstrapProgress) Write(b []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.HasPrefix(line, "E: ") || strings.HasPrefix(line, "W: ") || strings.Contains(line, "Base system installed") {
			fmt.Fprintln(p.w, "debootstrap:", line)
		}
	}
	return len(b), nil
}

// slimDirs are the directories whose contents the base leaves out: the runtime's own
// mounts (dev, proc, sys), scratch space, apt's lists (the Dockerfile removes them) and what
// debian:*-slim's dpkg path-exclude list drops.
var slimDirs = []string{"dev", "proc", "sys", "tmp", "var/lib/apt/lists",
	"usr/share/groff", "usr/share/info", "usr/share/linda", "usr/share/lintian/overrides",
	"usr/share/locale", "usr/share/man"}

// slimExclude says which entries of the debootstrap tree the base layer leaves out: the
// contents of slimDirs; documentation but copyright files; logs, downloaded packages and apt's
// caches; and the host's /etc/hostname and /etc/resolv.conf, which debootstrap copies in
// (container runtimes mount their own).
func slimExclude(name string, isDir bool) bool {
	for _, d := range slimDirs {
		if strings.HasPrefix(name, d+"/") {
			return true
		}
	}
	if doc, ok := strings.CutPrefix(name, "usr/share/doc/"); ok {
		parts := strings.Split(doc, "/")
		if len(parts) == 1 {
			return !isDir
		}
		return len(parts) != 2 || parts[1] != "copyright"
	}
	switch {
	case name == "etc/hostname", name == "etc/resolv.conf":
		return true
	case strings.HasPrefix(name, "var/log/"):
		return !isDir
	case strings.HasPrefix(name, "var/cache/apt/"):
		return !isDir && (strings.HasSuffix(name, ".deb") || strings.HasSuffix(name, ".bin"))
	case strings.HasPrefix(name, "var/cache/debconf/"):
		return strings.HasSuffix(name, "-old")
	}
	return false
}

// removeAllUnmounted removes dir after unmounting whatever is mounted below it (a debootstrap
// that failed half-way can leave its /proc and /sys mounts in the target), so that removing
// never reaches into a mounted file system.
func removeAllUnmounted(dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for i := len(mounts) - 1; i >= 0; i-- { // deepest first
		if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting %s: %w", mounts[i], err)
		}
	}
	if mounts, err := mountsUnder(dir); err != nil || len(mounts) > 0 {
		return fmt.Errorf("%s: still mounted below it: %v (%v)", dir, mounts, err)
	}
	return os.RemoveAll(dir)
}

// mountsUnder lists the mount points at or below dir, sorted.
func mountsUnder(dir string) ([]string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == abs || strings.HasPrefix(mp, abs+"/") {
			out = append(out, mp)
		}
	}
	sort.Strings(out)
	return out, sc.Err()
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// hostRelease returns VERSION_CODENAME from /etc/os-release text.
func hostRelease(osRelease string) (string, error) {
	for _, line := range strings.Split(osRelease, "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok && strings.Trim(v, `"'`) != "" {
			return strings.Trim(v, `"'`), nil
		}
	}
	return "", fmt.Errorf("os-release has no VERSION_CODENAME")
}

// hostAptSources reads the host's apt source files: /etc/apt/sources.list, then the files in
// sources.list.d in name order (apt's order). A missing sources.list is skipped.
func hostAptSources(etcApt string) ([]aptFile, error) {
	names := []string{filepath.Join(etcApt, "sources.list")}
	d, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*"))
	sort.Strings(d)
	names = append(names, d...)
	var files []aptFile
	for _, n := range names {
		data, err := os.ReadFile(n)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		files = append(files, aptFile{name: n, text: string(data)})
	}
	return files, nil
}

type aptFile struct{ name, text string }

// aptMirror returns the URI of the first enabled "deb" source that serves release's main
// component, from one-line (.list) and deb822 (.sources) files.
func aptMirror(files []aptFile, release string) (string, error) {
	for _, f := range files {
		if !strings.HasSuffix(f.name, ".list") && !strings.HasSuffix(f.name, ".sources") {
			continue // e.g. a source disabled by renaming
		}
		if strings.HasSuffix(f.name, ".sources") {
			for _, p := range deb822(f.text) {
				if p["Enabled"] == "no" || !hasField(p["Types"], "deb") || !hasField(p["Suites"], release) || !hasField(p["Components"], "main") {
					continue
				}
				if uris := strings.Fields(p["URIs"]); len(uris) > 0 {
					return uris[0], nil
				}
			}
			continue
		}
		for _, line := range strings.Split(f.text, "\n") {
			line = aptOptions.ReplaceAllString(strings.SplitN(line, "#", 2)[0], " ")
			w := strings.Fields(line)
			if len(w) >= 4 && w[0] == "deb" && w[2] == release && hasField(strings.Join(w[3:], " "), "main") {
				return w[1], nil
			}
		}
	}
	return "", fmt.Errorf("no apt source for %s main (set -mirror)", release)
}

// aptOptions matches the [ option=value ... ] of a one-line source.
var aptOptions = regexp.MustCompile(`\[[^]]*\]`)

func hasField(list, v string) bool {
	for _, f := range strings.Fields(list) {
		if f == v {
			return true
		}
	}
	return false
}

// deb822 splits deb822 text into paragraphs of fields (continuation lines joined).
func deb822(text string) []map[string]string {
	var out []map[string]string
	p, last := map[string]string{}, ""
	for _, line := range strings.Split(text+"\n", "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
		case strings.TrimSpace(line) == "":
			if len(p) > 0 {
				out = append(out, p)
			}
			p, last = map[string]string{}, ""
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				p[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, _ := strings.Cut(line, ":")
			last = strings.TrimSpace(k)
			p[last] = strings.TrimSpace(v)
		}
	}
	return out
}
