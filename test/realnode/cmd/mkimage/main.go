// Command mkimage builds the OCI image tars of the real-kubelet bench without a registry or a
// container engine (`make image`, through hack/build-image.sh):
//
//	mkimage svcproxy [-dockerfile Dockerfile] [-context .] [-cache .cache/images] [-ref localhost/svcproxy:dev]
//	                 [-o CACHE/svcproxy.tar] [-build-arg VERSION=v] [-build-arg COMMIT=c] [-release R] [-mirror URL]
//	mkimage binary -ref REF -o OUT.tar BINARY
//	mkimage spec [-dockerfile Dockerfile]
//
// svcproxy builds the image the Dockerfile defines, reading it for everything: the build
// stage's go build (run here as it is written there, with the -o directory a temporary one and
// the build args expanded), the final stage's apt-get install packages, COPY lines, ENV,
// ENTRYPOINT and CMD. The Dockerfile's base image is replaced by a Debian base built with
// debootstrap from the host's release and apt mirror (see Base), cached under
// CACHE/base-<hash>/. The image has two layers: that base, then the COPY'd files (owner 0,
// modification time 0). A Dockerfile line mkimage could not reproduce is an error, so the two
// cannot drift apart.
//
// binary packs one static binary as a one-layer image: /NAME with ENTRYPOINT ["/NAME"], plus
// /etc/passwd (root, nobody) and /tmp.
//
// spec prints what svcproxy reads from the Dockerfile, as JSON.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/test/realnode/ociimage"
)

// debianPath is the PATH of Debian's official images, which the Dockerfile's base provides.
const debianPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: mkimage svcproxy|binary|spec [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "svcproxy":
		err = cmdSvcproxy(os.Args[2:])
	case "binary":
		err = cmdBinary(os.Args[2:])
	case "spec":
		err = cmdSpec(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (svcproxy, binary, spec)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// buildArgs is a repeated NAME=VALUE flag.
type buildArgs map[string]string

func (b buildArgs) String() string { return fmt.Sprint(map[string]string(b)) }
func (b buildArgs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want NAME=VALUE")
	}
	b[k] = v
	return nil
}

func cmdSpec(args []string) error {
	fs := flag.NewFlagSet("spec", flag.ExitOnError)
	dockerfile := fs.String("dockerfile", "Dockerfile", "the Dockerfile")
	bargs := buildArgs{}
	fs.Var(bargs, "build-arg", "NAME=VALUE, as docker build --build-arg")
	fs.Parse(args)
	spec, err := readSpecFile(*dockerfile, bargs)
	if err != nil {
		return err
	}
	out, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func readSpecFile(path string, bargs map[string]string) (Spec, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return Spec{}, err
	}
	return readSpec(string(text), bargs)
}

func cmdSvcproxy(args []string) error {
	fs := flag.NewFlagSet("svcproxy", flag.ExitOnError)
	dockerfile := fs.String("dockerfile", "Dockerfile", "the Dockerfile that defines the image")
	context := fs.String("context", ".", "the build context (the repository)")
	cache := fs.String("cache", ".cache/images", "where base layers are cached")
	ref := fs.String("ref", "localhost/svcproxy:dev", "image reference")
	out := fs.String("o", "", "output tar (default CACHE/svcproxy.tar)")
	release := fs.String("release", "", "Debian release of the base (default: the host's)")
	mirror := fs.String("mirror", "", "apt mirror of the base (default: the host's source for that release)")
	goCmd := fs.String("go", "go", "the go command")
	bargs := buildArgs{}
	fs.Var(bargs, "build-arg", "NAME=VALUE, as docker build --build-arg (VERSION, COMMIT)")
	fs.Parse(args)
	if *out == "" {
		*out = filepath.Join(*cache, "svcproxy.tar")
	}

	spec, err := readSpecFile(*dockerfile, bargs)
	if err != nil {
		return err
	}
	base, err := hostBase(*release, *mirror, spec.Packages)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*cache, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(*cache, ".svcproxy-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	// debootstrap (network and dpkg) and go build (CPU) run side by side.
	type result struct {
		l   ociimage.Layer
		err error
	}
	baseDone := make(chan result, 1)
	go func() {
		start := time.Now()
		l, err := base.Layer(*cache, os.Stderr)
		if err == nil {
			fmt.Fprintf(os.Stderr, "mkimage: base layer %s, %d MB, %.1f s\n", l.Digest, l.Size>>20, time.Since(start).Seconds())
		}
		baseDone <- result{l, err}
	}()

	binDir := filepath.Join(work, "out")
	start := time.Now()
	if err := goBuild(*goCmd, *context, spec.GoBuild, binDir); err != nil {
		<-baseDone
		return err
	}
	fmt.Fprintf(os.Stderr, "mkimage: go build %.1f s\n", time.Since(start).Seconds())
	b := <-baseDone
	if b.err != nil {
		return b.err
	}
	img, err := svcproxyImage(spec, *ref, binDir, *context, b.l, filepath.Join(work, "app.tar"))
	if err != nil {
		return err
	}
	return writeArchive(*out, img)
}

// hostBase completes a Base with the host's release and apt mirror where not given.
func hostBase(release, mirror string, packages []string) (Base, error) {
	if release == "" {
		osr, err := os.ReadFile("/etc/os-release")
		if err != nil {
			return Base{}, err
		}
		if release, err = hostRelease(string(osr)); err != nil {
			return Base{}, err
		}
	}
	if mirror == "" {
		files, err := hostAptSources("/etc/apt")
		if err != nil {
			return Base{}, err
		}
		if mirror, err = aptMirror(files, release); err != nil {
			return Base{}, err
		}
	}
	return Base{Release: release, Mirror: mirror, Packages: packages}, nil
}

// goBuild runs the Dockerfile's go build in the build context, writing into outDir.
func goBuild(goCmd, context string, gb GoBuild, outDir string) error {
	args := append([]string{"build"}, gb.Flags...)
	args = append(args, "-o", outDir+"/")
	args = append(args, gb.Packages...)
	cmd := exec.Command(goCmd, args...)
	cmd.Dir = context
	cmd.Env = append(os.Environ(), gb.Env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	fmt.Fprintf(os.Stderr, "mkimage: %s %s %q\n", strings.Join(gb.Env, " "), goCmd, args)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	return nil
}

// svcproxyImage puts the image together: the base layer, then a layer with the files the
// Dockerfile's COPY lines name (build outputs from binDir), written to appLayer.
func svcproxyImage(spec Spec, ref, binDir, context string, base ociimage.Layer, appLayer string) (ociimage.Image, error) {
	files, err := spec.Files(binDir, context)
	if err != nil {
		return ociimage.Image{}, err
	}
	app, err := ociimage.WriteFilesLayer(appLayer, files, time.Unix(0, 0))
	if err != nil {
		return ociimage.Image{}, err
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	app.Comment = "COPY (Dockerfile) " + strings.Join(names, " ")
	cfg := spec.Config
	cfg.Env = append([]string{debianPath}, cfg.Env...)
	return ociimage.Image{Ref: ref, Config: cfg, Layers: []ociimage.Layer{base, app}, Created: time.Unix(0, 0)}, nil
}

func cmdBinary(args []string) error {
	fs := flag.NewFlagSet("binary", flag.ExitOnError)
	ref := fs.String("ref", "", "image reference")
	out := fs.String("o", "", "output tar")
	fs.Parse(args)
	if *ref == "" || *out == "" || fs.NArg() != 1 {
		return fmt.Errorf("usage: mkimage binary -ref REF -o OUT.tar BINARY")
	}
	layer := *out + ".layer"
	defer os.Remove(layer)
	img, err := binaryImage(*ref, fs.Arg(0), layer)
	if err != nil {
		return err
	}
	return writeArchive(*out, img)
}

// binaryImage is a one-layer image of a static binary: /NAME, ENTRYPOINT ["/NAME"].
func binaryImage(ref, binary, layerPath string) (ociimage.Image, error) {
	name := "/" + filepath.Base(binary)
	l, err := ociimage.WriteFilesLayer(layerPath, []ociimage.File{
		{Name: name, Src: binary, Mode: 0o755},
		{Name: "/etc/passwd", Data: []byte("root:x:0:0:root:/:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{Name: "/tmp", Dir: true, Mode: os.ModeSticky | 0o777},
	}, time.Unix(0, 0))
	if err != nil {
		return ociimage.Image{}, err
	}
	l.Comment = "mkimage binary " + name
	return ociimage.Image{
		Ref:     ref,
		Config:  ociimage.Config{Entrypoint: []string{name}, Env: []string{"PATH=/"}, WorkingDir: "/"},
		Layers:  []ociimage.Layer{l},
		Created: time.Unix(0, 0),
	}, nil
}

func writeArchive(out string, img ociimage.Image) error {
	desc, err := ociimage.WriteArchive(out, img)
	if err != nil {
		return err
	}
	st, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s %d MB\n", out, img.Ref, desc.Digest, st.Size()>>20)
	return nil
}
