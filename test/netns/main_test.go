package netns

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
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
	dir, err := os.MkdirTemp("", "svcproxy-netns-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Ctrl-C or a kill: remove this run's namespaces, cgroups and mounts before dying (the
	// processes started by the harness die with the test binary through Pdeathsig).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
		defer scancel()
		// Tests still running may be building sandboxes: forbid new ones, give those in
		// flight a moment to notice and give up, then sweep (twice, for stragglers).
		marker := StopMarker(RunPrefix())
		os.WriteFile(marker, nil, 0o600)
		time.Sleep(300 * time.Millisecond)
		for i := 0; i < 2; i++ {
			removed, err := SweepRun(sctx, RunPrefix())
			fmt.Fprintf(os.Stderr, "%v: swept %v (err %v)\n", sig, removed, err)
			time.Sleep(200 * time.Millisecond)
		}
		os.Remove(marker)
		os.RemoveAll(dir)
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
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
	signal.Stop(sigs)
	defer os.Remove(StopMarker(RunPrefix()))
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
