package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// RepoRoot returns the root of the svcproxy repository (the directory whose go.mod declares
// module github.com/svcproxy/svcproxy), searched upwards from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/svcproxy/svcproxy\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of github.com/svcproxy/svcproxy above the working directory")
		}
		dir = parent
	}
}

// KubeBinDir returns the directory holding kube-apiserver and kube-proxy: $KUBE_BIN_DIR when
// set, else the cache dir of hack/build-kube.sh, which is run to build them when they are
// missing (about 4 minutes on 2 cores; reused afterwards).
func KubeBinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("KUBE_BIN_DIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "kube-apiserver")); err != nil {
			t.Fatalf("harness: KUBE_BIN_DIR=%s: %v", d, err)
		}
		return d
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	start := time.Now()
	cmd := exec.Command(filepath.Join(root, "hack", "build-kube.sh"))
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("harness: hack/build-kube.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	dir := lines[len(lines)-1]
	if d := time.Since(start); d > 10*time.Second {
		t.Logf("harness: built kube binaries into %s in %s", dir, d.Round(time.Second))
	}
	return dir
}

// SvcproxyBinary returns the path of an svcproxy binary for tests that run the daemon:
// $SVCPROXY_BIN when set (the binary, or a directory holding it), else a fresh `go build ./cmd/svcproxy` of this work tree into a
// temporary directory (fast with a warm build cache), so a test never runs a stale bin/.
func SvcproxyBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SVCPROXY_BIN"); p != "" {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("harness: SVCPROXY_BIN: %v", err)
		}
		if fi.IsDir() { // a directory such as bin/, as test/netns accepts too
			p = filepath.Join(p, "svcproxy")
		}
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "svcproxy")
	start := time.Now()
	cmd := exec.Command(goBin, "build", "-o", out, "./cmd/svcproxy")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("harness: building svcproxy: %v\n%s", err, b)
	}
	t.Logf("harness: built svcproxy in %s", time.Since(start).Round(time.Millisecond))
	return out
}

// CNIBinaries returns a directory (a CNI_PATH) holding svcproxy-cni and the reference CNI
// client cnitool. svcproxy-cni is taken from $SVCPROXY_BIN when that is a directory holding
// it (bin/, next to the daemon under test), else built from ./cmd/svcproxy-cni of this work
// tree; cnitool is built from the module's tool dependency github.com/containernetworking/cni/cnitool.
func CNIBinaries(t testing.TB) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := t.TempDir()
	pkgs := []struct{ pkg, name string }{{"github.com/containernetworking/cni/cnitool", "cnitool"}}
	plugin := ""
	if p := os.Getenv("SVCPROXY_BIN"); p != "" {
		if fi, err := os.Stat(filepath.Join(p, "svcproxy-cni")); err == nil && fi.Mode().IsRegular() {
			plugin = filepath.Join(p, "svcproxy-cni")
		}
	}
	if plugin == "" {
		pkgs = append(pkgs, struct{ pkg, name string }{"./cmd/svcproxy-cni", "svcproxy-cni"})
	} else {
		b, err := os.ReadFile(plugin)
		if err != nil {
			t.Fatalf("harness: %v", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "svcproxy-cni"), b, 0o755); err != nil {
			t.Fatalf("harness: %v", err)
		}
	}
	start := time.Now()
	for _, p := range pkgs {
		cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, p.name), p.pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("harness: building %s: %v\n%s", p.pkg, err, b)
		}
	}
	t.Logf("harness: CNI binaries in %s (built in %s)", dir, time.Since(start).Round(time.Millisecond))
	return dir
}
