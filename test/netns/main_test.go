package netns

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// bins holds the binaries every test of this package runs, built once per test process by
// TestMain (podserver) and on first use (svcproxy, which the scenarios need and the harness
// self-tests do not). Set in TestMain and never reassigned.
var bins *binSet

type binSet struct {
	dir       string
	podServer string
	svcproxy  func() (string, error)
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every test calls RequireRoot, which skips or (with $CI) fails.
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "svcproxy-netns-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ps, err := BuildPodServer(ctx, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bins = &binSet{dir: dir, podServer: ps, svcproxy: sync.OnceValues(func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		return BuildSvcproxy(ctx, dir)
	})}
	code := m.Run()
	// Whatever a crashed or interrupted test of this process left behind.
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
	defer scancel()
	removed, err := SweepRun(sctx, RunPrefix())
	if len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "swept leftovers of this run: %v\n", removed)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sweep:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// newSandbox is NewT with the test binaries filled in.
func newSandbox(t *testing.T, opts Options) *Sandbox {
	t.Helper()
	RequireRoot(t)
	opts.PodServer = bins.podServer
	return NewT(t, opts)
}
