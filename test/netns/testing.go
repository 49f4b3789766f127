package netns

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips t when the process is not root, unless $CI is set: in CI a missing
// privilege is a failure, never a silent skip. It also requires the ip tool.
func RequireRoot(t testing.TB) {
	t.Helper()
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "needs root (network namespaces)"
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			why = "needs the ip tool (iproute2)"
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s, and $CI is set so this is a failure, not a skip", why)
	}
	t.Skip(why)
}

// NewT builds a sandbox for t and removes it in t.Cleanup, even when t fails. Logs of the
// processes it started are printed when t failed.
func NewT(t testing.TB, opts Options) *Sandbox {
	t.Helper()
	RequireRoot(t)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := New(context.Background(), opts)
	if err != nil {
		t.Fatalf("build sandbox: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.mu.Lock()
			procs := append([]*Process(nil), s.procs...)
			s.mu.Unlock()
			for _, p := range procs {
				t.Logf("--- log of %s (pid %d):\n%s", p.Name, p.PID(), p.Log())
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("tear down sandbox %s: %v", s.ID, err)
		}
	})
	return s
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
