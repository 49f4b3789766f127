package netns

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Package paths of the binaries the harness runs.
const (
	PodServerPkg = "github.com/svcproxy/svcproxy/test/netns/cmd/podserver"
	SvcproxyPkg  = "github.com/svcproxy/svcproxy/cmd/svcproxy"
)

// Environment variables that point the harness at prebuilt binaries.
const (
	// EnvSvcproxyBin is the svcproxy binary to test, or a directory holding it (bin/ after
	// `make build`); built from SvcproxyPkg when unset.
	EnvSvcproxyBin = "SVCPROXY_BIN"
	// EnvPodServerBin is the podserver binary; built from PodServerPkg when unset.
	EnvPodServerBin = "SVCPROXY_PODSERVER_BIN"
)

// Binaries are the programs the harness runs.
type Binaries struct {
	PodServer string
	Svcproxy  string
}

// BuildPodServer returns $SVCPROXY_PODSERVER_BIN, or builds podserver into dir.
func BuildPodServer(ctx context.Context, dir string) (string, error) {
	return binary(ctx, EnvPodServerBin, PodServerPkg, dir, "podserver")
}

// BuildSvcproxy returns $SVCPROXY_BIN, or builds svcproxy into dir.
func BuildSvcproxy(ctx context.Context, dir string) (string, error) {
	return binary(ctx, EnvSvcproxyBin, SvcproxyPkg, dir, "svcproxy")
}

func binary(ctx context.Context, env, pkg, dir, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		// A directory (such as bin/ after `make build`) holds the binary under its name.
		if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
			abs = filepath.Join(abs, name)
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("netns: $%s=%s: %w", env, p, err)
		}
		return abs, nil
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if root, err := moduleRoot(ctx); err == nil {
		cmd.Dir = root
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("netns: go build %s (set $%s to use a prebuilt one): %w\n%s", pkg, env, err, b)
	}
	return out, nil
}

// moduleRoot is the directory of the svcproxy module's go.mod, found from the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	b, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(string(b))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("netns: not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// ModuleRoot returns the root directory of the module the process runs in (for example to
// find deploy/examples).
func ModuleRoot(ctx context.Context) (string, error) { return moduleRoot(ctx) }
