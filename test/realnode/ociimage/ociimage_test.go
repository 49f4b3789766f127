package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// entry is one tar member as the tests see it.
type entry struct {
	typ      byte
	mode     int64
	uid, gid int
	mtime    int64
	link     string
	data     string
}

func readTar(t *testing.T, r io.Reader) (names []string, entries map[string]entry) {
	t.Helper()
	entries = map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, entries
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		entries[h.Name] = entry{h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime.Unix(), h.Linkname, string(data)}
	}
}

func readTarFile(t *testing.T, path string) ([]string, map[string]entry) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return readTar(t, f)
}

func sha(data string) string {
	sum := sha256.Sum256([]byte(data))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// tree makes a small root file system: files, a setuid binary, a symlink, a hard link, and
// what Exclude should drop.
func tree(t *testing.T) string {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "usr/bin/tool"), "tool", 0o755)
	writeFile(t, filepath.Join(dir, "usr/bin/su"), "su", os.ModeSetuid|0o755)
	writeFile(t, filepath.Join(dir, "etc/os-release"), "ID=test\n", 0o644)
	writeFile(t, filepath.Join(dir, "dev/null"), "not a device", 0o644)
	if err := os.Symlink("tool", filepath.Join(dir, "usr/bin/tool-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "usr/bin/tool"), filepath.Join(dir, "usr/bin/tool2")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestWriteDirLayer(t *testing.T) {
	dir := tree(t)
	out := t.TempDir()
	mtime := time.Unix(1000, 0)
	opt := DirOptions{
		Exclude:   func(name string, isDir bool) bool { return filepath.Dir(name) == "dev" },
		RootOwner: true,
		ModTime:   mtime,
	}
	l, err := WriteDirLayer(filepath.Join(out, "layer.tar"), dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	if l.Digest != sha(string(raw)) || l.Size != int64(len(raw)) {
		t.Errorf("layer %s %d, file is %s %d", l.Digest, l.Size, sha(string(raw)), len(raw))
	}
	names, entries := readTar(t, bytes.NewReader(raw))
	want := []string{"dev/", "etc/", "etc/os-release", "usr/", "usr/bin/", "usr/bin/su", "usr/bin/tool", "usr/bin/tool-link", "usr/bin/tool2"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("names %q, want %q", names, want)
	}
	for n, e := range entries {
		if e.uid != 0 || e.gid != 0 || e.mtime != 1000 {
			t.Errorf("%s: owner %d:%d mtime %d, want 0:0 1000", n, e.uid, e.gid, e.mtime)
		}
	}
	checks := map[string]entry{
		"usr/bin/tool":      {typ: tar.TypeReg, mode: 0o755, mtime: 1000, data: "tool"},
		"usr/bin/su":        {typ: tar.TypeReg, mode: 0o4755, mtime: 1000, data: "su"},
		"usr/bin/tool-link": {typ: tar.TypeSymlink, mode: 0o777, mtime: 1000, link: "tool"},
		"usr/bin/tool2":     {typ: tar.TypeLink, mode: 0o755, mtime: 1000, link: "usr/bin/tool"},
	}
	for n, want := range checks {
		if got := entries[n]; got != want {
			t.Errorf("%s: %+v, want %+v", n, got, want)
		}
	}

	// The same tree gives the same bytes.
	l2, err := WriteDirLayer(filepath.Join(out, "again.tar"), dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Digest != l.Digest {
		t.Errorf("second layer %s, first %s", l2.Digest, l.Digest)
	}
}

func TestWriteDirLayerKeepsOwnersAndTimes(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("chown needs root")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "etc/shadow")
	writeFile(t, p, "x", 0o640)
	if err := os.Chown(p, 0, 42); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, time.Unix(5, 0), time.Unix(7, 0)); err != nil {
		t.Fatal(err)
	}
	l, err := WriteDirLayer(filepath.Join(t.TempDir(), "l.tar"), dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, entries := readTarFile(t, l.Path)
	if e := entries["etc/shadow"]; e.gid != 42 || e.mtime != 7 || e.mode != 0o640 {
		t.Errorf("etc/shadow: %+v, want gid 42, mtime 7, mode 0640", e)
	}
}

func TestWriteFilesLayer(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bin")
	writeFile(t, src, "binary", 0o755)
	files := []File{
		{Name: "/usr/local/bin/svcproxy", Src: src},
		{Name: "/usr/share/svcproxy/10-svcproxy.conflist", Data: []byte("{}"), Mode: 0o644},
		{Name: "/tmp", Dir: true, Mode: os.ModeSticky | 0o777},
	}
	l, err := WriteFilesLayer(filepath.Join(t.TempDir(), "app.tar"), files, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	names, entries := readTarFile(t, l.Path)
	want := []string{"tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/svcproxy", "usr/share/", "usr/share/svcproxy/", "usr/share/svcproxy/10-svcproxy.conflist"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("names %q, want %q", names, want)
	}
	checks := map[string]entry{
		"tmp/":                   {typ: tar.TypeDir, mode: 0o1777},
		"usr/local/":             {typ: tar.TypeDir, mode: 0o755},
		"usr/local/bin/svcproxy": {typ: tar.TypeReg, mode: 0o755, data: "binary"},
		"usr/share/svcproxy/10-svcproxy.conflist": {typ: tar.TypeReg, mode: 0o644, data: "{}"},
	}
	for n, want := range checks {
		if got := entries[n]; got != want {
			t.Errorf("%s: %+v, want %+v", n, got, want)
		}
	}

	if _, err := WriteFilesLayer(filepath.Join(t.TempDir(), "dup.tar"), append(files, File{Name: "tmp", Dir: true}), time.Time{}); err == nil {
		t.Error("a name listed twice: no error")
	}
	if _, err := WriteFilesLayer(filepath.Join(t.TempDir(), "clash.tar"), []File{{Name: "/a", Data: nil}, {Name: "/a/b", Data: nil}}, time.Time{}); err == nil {
		t.Error("a file that is also a directory: no error")
	}
}

func TestWriteArchive(t *testing.T) {
	dir := t.TempDir()
	base, err := WriteDirLayer(filepath.Join(dir, "base.tar"), tree(t), DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base.Comment = "base"
	app, err := WriteFilesLayer(filepath.Join(dir, "app.tar"), []File{{Name: "/app", Data: []byte("app"), Mode: 0o755}}, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	img := Image{
		Ref:    "localhost/test/app:v1",
		Config: Config{Entrypoint: []string{"/app"}, Cmd: []string{"run"}, Env: []string{"PATH=/"}},
		Layers: []Layer{base, app},
	}
	out := filepath.Join(dir, "img.tar")
	desc, err := WriteArchive(out, img)
	if err != nil {
		t.Fatal(err)
	}

	names, entries := readTarFile(t, out)
	if names[0] != "oci-layout" || names[1] != "index.json" {
		t.Errorf("archive starts with %q, want oci-layout, index.json", names[:2])
	}
	if got := entries["oci-layout"].data; got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %s", got)
	}
	// Every blob is named by the digest of its content.
	for n, e := range entries {
		if e.typ == tar.TypeReg && filepath.Dir(n) == "blobs/sha256" && sha(e.data) != "sha256:"+filepath.Base(n) {
			t.Errorf("blob %s has digest %s", n, sha(e.data))
		}
	}
	blob := func(d Descriptor) string {
		t.Helper()
		e, ok := entries[blobName(d.Digest)]
		if !ok {
			t.Fatalf("no blob %s", d.Digest)
		}
		if int64(len(e.data)) != d.Size {
			t.Errorf("blob %s: %d bytes, descriptor says %d", d.Digest, len(e.data), d.Size)
		}
		return e.data
	}

	var idx index
	if err := json.Unmarshal([]byte(entries["index.json"].data), &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 || !reflect.DeepEqual(idx.Manifests[0], desc) {
		t.Fatalf("index %+v, WriteArchive returned %+v", idx, desc)
	}
	if a := desc.Annotations; a[AnnotationImageName] != "localhost/test/app:v1" || a[AnnotationRefName] != "v1" {
		t.Errorf("annotations %v", a)
	}
	var m manifest
	if err := json.Unmarshal([]byte(blob(desc)), &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != MediaTypeManifest || m.Config.MediaType != MediaTypeConfig || len(m.Layers) != 2 {
		t.Fatalf("manifest %+v", m)
	}
	var cfg imageConfig
	if err := json.Unmarshal([]byte(blob(m.Config)), &cfg); err != nil {
		t.Fatal(err)
	}
	for i, l := range []Layer{base, app} {
		d := m.Layers[i]
		if d.MediaType != MediaTypeLayer || d.Digest != l.Digest || d.Size != l.Size || cfg.RootFS.DiffIDs[i] != l.Digest {
			t.Errorf("layer %d: manifest %+v, diff ID %s, want %s %d", i, d, cfg.RootFS.DiffIDs[i], l.Digest, l.Size)
		}
		if raw, _ := os.ReadFile(l.Path); blob(d) != string(raw) {
			t.Errorf("layer %d: blob differs from %s", i, l.Path)
		}
	}
	if !reflect.DeepEqual(cfg.Config, img.Config) || cfg.OS != "linux" || cfg.Architecture == "" || cfg.History[0].CreatedBy != "base" {
		t.Errorf("config %+v", cfg)
	}

	// Same input, same archive.
	out2 := filepath.Join(dir, "img2.tar")
	if _, err := WriteArchive(out2, img); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Error("two archives of the same image differ")
	}

	// A layer changed after it was hashed is refused, and no archive is left.
	if err := os.WriteFile(app.Path, []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.tar")
	if _, err := WriteArchive(bad, img); err == nil {
		t.Error("changed layer: no error")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("archive left after a failure: %v", err)
	}
}

func TestTag(t *testing.T) {
	for ref, want := range map[string]string{
		"registry.k8s.io/pause:3.10":   "3.10",
		"localhost/svcproxy:dev":       "dev",
		"localhost:5000/svcproxy":      "latest",
		"localhost:5000/svcproxy:v1.2": "v1.2",
	} {
		if got := Tag(ref); got != want {
			t.Errorf("Tag(%q) = %q, want %q", ref, got, want)
		}
	}
}
