package netns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Launcher says how a process enters its namespace.
type Launcher int

const (
	// LaunchDefault is IPNetnsExec for processes; for the svcproxy daemon it is IPNetnsExec in
	// mode iptables and Nsenter otherwise (auto, ebpf), because the eBPF backend's pins and
	// cgroup must live in the host's mount namespace to outlive the process.
	LaunchDefault Launcher = iota
	// IPNetnsExec runs `ip netns exec NS argv...`: the process also gets a private mount
	// namespace with /sys remounted for the network namespace (so /sys/class/net is right, and
	// mounts under /sys such as /sys/fs/bpf are not visible).
	IPNetnsExec
	// Nsenter runs `nsenter --net=PATH -- argv...`: only the network namespace changes, the
	// mounts stay the host's (bpffs and cgroup2 stay visible).
	Nsenter
)

// ProcSpec describes a process to start in a namespace.
type ProcSpec struct {
	// Name labels the process in logs and names its log file.
	Name string
	NS   *Namespace
	Argv []string
	// Launcher picks how to enter NS.
	Launcher Launcher
	// ReadyLine, when set, makes Start wait until the process prints this line on stdout.
	ReadyLine string
	// Env is added to the process's environment.
	Env []string
}

// Process is a process started by the harness. Stop it by its PID only.
type Process struct {
	Name    string
	LogPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	mu      sync.Mutex
}

// Start starts spec in its namespace (inside the sandbox's cgroup, if any, unless it runs in
// the external client). The process gets
// SIGKILL if the test process dies. Its stdout and stderr go to a log file in s.Dir. With a
// ReadyLine, Start returns only once that line was printed; it fails if the process exits
// first or ctx ends.
func (s *Sandbox) Start(ctx context.Context, spec ProcSpec) (*Process, error) {
	if spec.NS == nil || len(spec.Argv) == 0 {
		return nil, errors.New("netns: Start: needs a namespace and a command")
	}
	var argv []string
	switch spec.Launcher {
	case LaunchDefault, IPNetnsExec:
		argv = append([]string{"ip", "netns", "exec", spec.NS.Name}, spec.Argv...)
	case Nsenter:
		argv = append([]string{"nsenter", "--net=" + spec.NS.Path(), "--"}, spec.Argv...)
	default:
		return nil, fmt.Errorf("netns: Start: unknown launcher %d", spec.Launcher)
	}
	logPath := filepath.Join(s.Dir, fmt.Sprintf("%s.%d.log", spec.Name, time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("netns: Start %s: %w", spec.Name, err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("netns: Start %s: %w", spec.Name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = pw
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var cg *os.File
	if s.inCgroup(spec.NS) {
		if cg, err = os.Open(s.Cgroup); err != nil {
			pr.Close()
			pw.Close()
			logf.Close()
			return nil, fmt.Errorf("netns: Start %s: open cgroup: %w", spec.Name, err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logf.Close()
		return nil, fmt.Errorf("netns: Start %s (%s): %w", spec.Name, strings.Join(argv, " "), err)
	}
	pw.Close()
	p := &Process{Name: spec.Name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()

	ready := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		seen := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if !seen && spec.ReadyLine != "" && strings.TrimSpace(line) == spec.ReadyLine {
				seen = true
				close(ready)
			}
		}
		pr.Close()
	}()
	go func() {
		err := cmd.Wait()
		<-copied
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	s.log.Debug("started", "proc", spec.Name, "pid", cmd.Process.Pid, "ns", spec.NS.Name, "log", logPath)
	if spec.ReadyLine == "" {
		return p, nil
	}
	select {
	case <-ready:
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("netns: %s exited before printing %q: %v; log:\n%s", spec.Name, spec.ReadyLine, p.exitErr(), p.Log())
	case <-ctx.Done():
		p.Stop(context.Background(), time.Second)
		return nil, fmt.Errorf("netns: %s did not print %q: %w", spec.Name, spec.ReadyLine, ctx.Err())
	}
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the process (by PID). Sending to an exited process is not an error.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("netns: signal %v to %s (pid %d): %w", sig, p.Name, p.PID(), err)
	}
	return nil
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

func (p *Process) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Wait waits until the process exits and returns how it exited (nil for exit status 0).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.exitErr()
	case <-ctx.Done():
		return fmt.Errorf("netns: waiting for %s (pid %d) to exit: %w", p.Name, p.PID(), ctx.Err())
	}
}

// ExitCode is the exit status, -1 while running or when killed by a signal.
func (p *Process) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL and waits for the exit. It fails only
// when the process cannot be reaped.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	p.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("netns: %s (pid %d) did not exit after SIGKILL", p.Name, p.PID())
	}
}

// Log returns what the process wrote so far (stdout and stderr).
func (p *Process) Log() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(log %s unreadable: %v)", p.LogPath, err)
	}
	return string(b)
}

// inCgroup reports whether processes in ns run inside the sandbox's cgroup: every process of
// the node and its pods does, the external client's never (it stands for another machine, so
// the node's socket-level load balancing must not see its connections).
func (s *Sandbox) inCgroup(ns *Namespace) bool {
	return s.Cgroup != "" && (s.External == nil || ns.Name != s.External.Name)
}

// cgroup2Root finds where the cgroup v2 hierarchy is mounted.
func cgroup2Root() (string, error) {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "cgroup2" {
			return f[1], nil
		}
	}
	return "", errors.New("netns: no cgroup2 hierarchy mounted")
}

func (s *Sandbox) makeCgroup() error {
	root, err := cgroup2Root()
	if err != nil {
		return err
	}
	dir := filepath.Join(root, s.ID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("netns: make cgroup: %w", err)
	}
	s.Cgroup = dir
	return nil
}

// removeCgroup removes an (empty) cgroup, waiting briefly for killed processes to leave it.
func removeCgroup(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = syscall.Rmdir(dir); err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("netns: remove cgroup %s: %w", dir, err)
}
