package main

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/test/realnode/ociimage"
)

const repo = "../../../.."

func readDockerfile(t *testing.T) string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(repo, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	return string(text)
}

// TestSpecIsTheDockerfiles reads the repository's Dockerfile with plain regular expressions,
// independently of readSpec, and checks that what mkimage builds from (packages, go build,
// COPY destinations, ENTRYPOINT, CMD) is what the Dockerfile says; and that what the bench
// needs is there.
func TestSpecIsTheDockerfiles(t *testing.T) {
	text := readDockerfile(t)
	spec, err := readSpec(text, map[string]string{"VERSION": "v9", "COMMIT": "c9"})
	if err != nil {
		t.Fatal(err)
	}

	m := regexp.MustCompile(`apt-get install ([^&\\]*)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("no apt-get install in the Dockerfile")
	}
	var pkgs []string
	for _, w := range strings.Fields(m[1]) {
		if !strings.HasPrefix(w, "-") {
			pkgs = append(pkgs, w)
		}
	}
	if !reflect.DeepEqual(spec.Packages, pkgs) {
		t.Errorf("packages %q, the Dockerfile installs %q", spec.Packages, pkgs)
	}
	for _, p := range []string{"iptables", "nftables", "conntrack", "iproute2", "ca-certificates"} {
		if !slices.Contains(spec.Packages, p) {
			t.Errorf("package %s missing", p)
		}
	}

	for _, instr := range []string{"ENTRYPOINT", "CMD"} {
		m := regexp.MustCompile(`(?m)^`+instr+` (.*)$`).FindAllStringSubmatch(text, -1)
		if len(m) != 1 {
			t.Fatalf("%d %s lines", len(m), instr)
		}
		var want []string
		if err := json.Unmarshal([]byte(m[0][1]), &want); err != nil {
			t.Fatal(err)
		}
		got := spec.Config.Entrypoint
		if instr == "CMD" {
			got = spec.Config.Cmd
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %q, the Dockerfile says %q", instr, got, want)
		}
	}

	var dests []string
	for _, m := range regexp.MustCompile(`(?m)^COPY (--from=\S+ )?(.*) (\S+)$`).FindAllStringSubmatch(text, -1) {
		if m[1] == "" && m[2] == "." { // the build stage's COPY . .
			continue
		}
		if m[1] == "" && strings.HasPrefix(m[2], "go.mod") {
			continue
		}
		for _, src := range strings.Fields(m[2]) {
			if strings.HasSuffix(m[3], "/") {
				dests = append(dests, path.Join(m[3], path.Base(src)))
			} else {
				dests = append(dests, m[3])
			}
		}
	}
	var got []string
	for _, c := range spec.Copies {
		for _, src := range c.Srcs {
			got = append(got, c.File(src))
		}
	}
	if !reflect.DeepEqual(got, dests) {
		t.Errorf("COPY destinations %q, the Dockerfile's %q", got, dests)
	}
	for _, f := range []string{"/usr/local/bin/svcproxy", "/usr/local/bin/svcproxy-cni", "/usr/share/svcproxy/10-svcproxy.conflist",
		"/usr/share/svcproxy/cni/portmap", "/usr/share/svcproxy/cni/loopback"} {
		if !slices.Contains(got, f) {
			t.Errorf("the image lacks %s", f)
		}
	}

	gb := spec.GoBuild
	if !reflect.DeepEqual(gb.Env, []string{"CGO_ENABLED=0"}) ||
		!reflect.DeepEqual(gb.Flags, []string{"-trimpath", "-ldflags", "-s -w -X main.version=v9 -X main.commit=c9"}) {
		t.Errorf("go build env %q flags %q", gb.Env, gb.Flags)
	}
	for _, p := range []string{"./cmd/svcproxy", "./cmd/svcproxy-cni",
		"github.com/containernetworking/plugins/plugins/meta/portmap", "github.com/containernetworking/plugins/plugins/main/loopback"} {
		if !slices.Contains(gb.Packages, p) {
			t.Errorf("go build lacks %s", p)
		}
	}
	// Every binary copied from the build stage is one the go build makes.
	for _, c := range spec.Copies {
		for _, src := range c.Srcs {
			if !c.FromBuild {
				continue
			}
			if !slices.ContainsFunc(gb.Packages, func(p string) bool { return gb.OutDir+path.Base(p) == src }) {
				t.Errorf("COPY --from=build %s: no go build package makes it", src)
			}
		}
	}
}

// TestSvcproxyImage builds the svcproxy image from the Dockerfile with stand-in binaries and
// base, and reads back from the archive the files and the process the image has.
func TestSvcproxyImage(t *testing.T) {
	spec, err := readSpec(readDockerfile(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	binDir := filepath.Join(dir, "out")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range spec.GoBuild.Packages {
		if err := os.WriteFile(filepath.Join(binDir, path.Base(p)), []byte("binary "+p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	baseDir := filepath.Join(dir, "base")
	if err := os.MkdirAll(filepath.Join(baseDir, "usr/sbin"), 0o755); err != nil {
		t.Fatal(err)
	}
	base, err := ociimage.WriteDirLayer(filepath.Join(dir, "base.tar"), baseDir, ociimage.DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := svcproxyImage(spec, "localhost/svcproxy:test", binDir, repo, base, filepath.Join(dir, "app.tar"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "svcproxy.tar")
	if _, err := ociimage.WriteArchive(out, img); err != nil {
		t.Fatal(err)
	}

	a := readArchive(t, out)
	if a.ref != "localhost/svcproxy:test" || len(a.layers) != 2 {
		t.Fatalf("ref %s, %d layers", a.ref, len(a.layers))
	}
	if a.layers[0] != base.Digest {
		t.Errorf("first layer %s, want the base %s", a.layers[0], base.Digest)
	}
	if !reflect.DeepEqual(a.config.Entrypoint, spec.Config.Entrypoint) || !reflect.DeepEqual(a.config.Cmd, spec.Config.Cmd) ||
		!slices.Contains(a.config.Env, debianPath) {
		t.Errorf("config %+v", a.config)
	}
	conflist, err := os.ReadFile(filepath.Join(repo, "deploy/cni/10-svcproxy.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"usr/local/bin/svcproxy":                  "binary ./cmd/svcproxy",
		"usr/local/bin/svcproxy-cni":              "binary ./cmd/svcproxy-cni",
		"usr/share/svcproxy/cni/portmap":          "binary github.com/containernetworking/plugins/plugins/meta/portmap",
		"usr/share/svcproxy/cni/loopback":         "binary github.com/containernetworking/plugins/plugins/main/loopback",
		"usr/share/svcproxy/10-svcproxy.conflist": string(conflist),
	}
	app := a.files[a.layers[1]]
	for name, data := range want {
		if app[name] != data {
			t.Errorf("%s: %q, want %q", name, app[name], data)
		}
	}
	for name := range app {
		if _, ok := want[name]; !ok && !strings.HasSuffix(name, "/") {
			t.Errorf("unexpected %s in the app layer", name)
		}
	}
}

func TestBinaryImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pause")
	if err := os.WriteFile(bin, []byte("pause binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := binaryImage("registry.k8s.io/pause:3.10", bin, filepath.Join(dir, "layer.tar"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "pause.tar")
	if _, err := ociimage.WriteArchive(out, img); err != nil {
		t.Fatal(err)
	}
	a := readArchive(t, out)
	if a.ref != "registry.k8s.io/pause:3.10" || a.tag != "3.10" || len(a.layers) != 1 {
		t.Fatalf("ref %s tag %s, %d layers", a.ref, a.tag, len(a.layers))
	}
	if !reflect.DeepEqual(a.config.Entrypoint, []string{"/pause"}) {
		t.Errorf("entrypoint %q", a.config.Entrypoint)
	}
	if f := a.files[a.layers[0]]; f["pause"] != "pause binary" || !strings.Contains(f["etc/passwd"], "nobody") {
		t.Errorf("layer files %v", f)
	}
}

// archive is what the tests read back from an image tar, following index.json.
type archive struct {
	ref, tag string
	config   ociimage.Config
	layers   []string                     // digests, bottom first
	files    map[string]map[string]string // layer digest -> name -> content
}

func readArchive(t *testing.T, path string) archive {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blobs := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		blobs[strings.Replace(h.Name, "blobs/sha256/", "sha256:", 1)] = data
	}
	decode := func(key string, v any) {
		t.Helper()
		if err := json.Unmarshal(blobs[key], v); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
	}
	var idx struct{ Manifests []ociimage.Descriptor }
	decode("index.json", &idx)
	var man struct {
		Config ociimage.Descriptor
		Layers []ociimage.Descriptor
	}
	decode(idx.Manifests[0].Digest, &man)
	var cfg struct {
		Config ociimage.Config
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	decode(man.Config.Digest, &cfg)
	a := archive{
		ref:    idx.Manifests[0].Annotations[ociimage.AnnotationImageName],
		tag:    idx.Manifests[0].Annotations[ociimage.AnnotationRefName],
		config: cfg.Config,
		files:  map[string]map[string]string{},
	}
	for i, l := range man.Layers {
		if cfg.RootFS.DiffIDs[i] != l.Digest || int64(len(blobs[l.Digest])) != l.Size {
			t.Errorf("layer %d: %+v, diff ID %s, blob of %d bytes", i, l, cfg.RootFS.DiffIDs[i], len(blobs[l.Digest]))
		}
		a.layers = append(a.layers, l.Digest)
		files := map[string]string{}
		lr := tar.NewReader(strings.NewReader(string(blobs[l.Digest])))
		for {
			h, err := lr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(lr)
			files[h.Name] = string(data)
		}
		a.files[l.Digest] = files
	}
	return a
}

func TestReadSpecRefusesWhatItCannotBuild(t *testing.T) {
	good := readDockerfile(t)
	if _, err := readSpec(good, nil); err != nil {
		t.Fatal(err)
	}
	final := "ENTRYPOINT [\"/usr/local/bin/svcproxy\"]"
	for name, edit := range map[string][2]string{
		"another RUN in the image":  {final, "RUN useradd svcproxy\n" + final},
		"a pipe":                    {"apt-get update", "apt-get update | tee log"},
		"shell-form ENTRYPOINT":     {final, "ENTRYPOINT /usr/local/bin/svcproxy"},
		"an unknown instruction":    {final, "USER 1000\n" + final},
		"an unknown variable":       {"main.commit=${COMMIT}", "main.commit=${NOPE}"},
		"COPY from another image":   {"COPY --from=build /out/portmap", "COPY --from=busybox /out/portmap"},
		"a second go build":         {"RUN --mount=type=cache,target=/root/go/pkg/mod go mod download", "RUN go build ./cmd/svcproxy"},
		"a glob in COPY":            {"deploy/cni/10-svcproxy.conflist /usr", "deploy/cni/*.conflist /usr"},
		"another step in the build": {"RUN --mount=type=cache,target=/root/go/pkg/mod go mod download", "RUN go generate ./..."},
	} {
		if !strings.Contains(good, edit[0]) {
			t.Fatalf("%s: the Dockerfile has no %q to edit", name, edit[0])
		}
		if _, err := readSpec(strings.Replace(good, edit[0], edit[1], 1), nil); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestRunCommands(t *testing.T) {
	vars := map[string]string{"V": "1.2", "C": "abc"}
	for in, want := range map[string][][]string{
		`CGO_ENABLED=0 go build -ldflags "-X main.v=${V} -X main.c=$C" -o /out/ ./a`: {{"CGO_ENABLED=0", "go", "build", "-ldflags", "-X main.v=1.2 -X main.c=abc", "-o", "/out/", "./a"}},
		`apt-get update && apt-get install -y a b && rm -rf /x/*`:                    {{"apt-get", "update"}, {"apt-get", "install", "-y", "a", "b"}, {"rm", "-rf", "/x/*"}},
		`echo 'a $V' "b \"$V\"" c\ d; true`:                                          {{"echo", "a $V", `b "1.2"`, "c d"}, {"true"}},
	} {
		got, err := runCommands(in, vars)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("runCommands(%s) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{`a | b`, `a || b`, `a &`, `echo $NOPE`, `echo "x`, `a && && b`, "echo `x`"} {
		if _, err := runCommands(in, vars); err == nil {
			t.Errorf("runCommands(%s): no error", in)
		}
	}
}
