package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a command the harness started inside a namespace. Its stdout and stderr go to
// LogPath; it is stopped by PID (SIGTERM, then SIGKILL after a grace period) on Stop and on
// test cleanup, and its log tail is printed when the test failed.
type Process struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	once    sync.Once
}

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 10 * time.Second

// Start starts cmd inside the namespace with its output in dir/<name>.log. The process is
// stopped when the test ends; a process that exits on its own before that is reported by
// Exited.
func (n *NetNS) Start(t testing.TB, dir, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	p := n.start(t, dir, name, cmd)
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

// start starts the process without registering its cleanup.
func (n *NetNS) start(t testing.TB, dir, name string, cmd *exec.Cmd) *Process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("harness: creating log for %s: %v", name, err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	// A process group of its own, so a ^C on the test does not hit it before cleanup does;
	// Pdeathsig kills it if the test binary dies without running its cleanups (a panic or a
	// -timeout). Pdeathsig follows the thread that forked: Do returns that thread to the
	// runtime's pool, which keeps it for the life of the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.Do(cmd.Start); err != nil {
		f.Close()
		t.Fatalf("harness: starting %s (%s) in netns %s: %v", name, strings.Join(cmd.Args, " "), n.Name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p
}

// cleanup stops the process at the end of a test, and shows its log tail if the test failed.
func (p *Process) cleanup(t testing.TB) { p.cleanupWithin(t, StopGrace) }

func (p *Process) cleanupWithin(t testing.TB, grace time.Duration) {
	start := time.Now()
	if err := p.StopWithin(grace); err != nil {
		t.Logf("harness: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Logf("harness: stopping %s took %s", p.Name, d.Round(time.Millisecond))
	}
	if t.Failed() {
		t.Logf("harness: last lines of %s:\n%s", p.LogPath, Tail(p.LogPath, 40))
	}
}

// PID returns the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process (by PID), waits up to StopGrace, then sends SIGKILL and
// waits for it to end. Stopping a process that has ended is a no-op. The returned error only
// reports a process that could not be signalled; its own exit status is ignored.
func (p *Process) Stop() error { return p.StopWithin(StopGrace) }

// StopWithin is Stop with another grace period.
func (p *Process) StopWithin(grace time.Duration) error {
	var err error
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		if e := p.cmd.Process.Signal(syscall.SIGTERM); e != nil {
			err = fmt.Errorf("sending SIGTERM to %s (pid %d): %w", p.Name, p.PID(), e)
		}
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
		if e := p.cmd.Process.Kill(); e != nil {
			err = fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID(), e)
		}
		<-p.done
	})
	return err
}

// Kill sends SIGKILL to the process (by PID) and waits for it to end: a crash, not a
// shutdown. Killing a process that has ended is a no-op.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Kill(); err != nil {
		select {
		case <-p.done:
			return nil
		default:
		}
		return fmt.Errorf("killing %s (pid %d): %w", p.Name, p.PID(), err)
	}
	<-p.done
	return nil
}

// Tail returns the last n lines of the file at path (or the error reading it).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
