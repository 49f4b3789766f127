package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/api"
)

// DaemonOptions describe how to run svcproxy in the sandbox's node namespace.
type DaemonOptions struct {
	// Bin is the svcproxy binary.
	Bin string
	// Mode is passed as --mode (iptables, ebpf, auto); empty leaves the config's mode.
	Mode string
	// NodeName is passed as --node-name; "node1" when empty.
	NodeName string
	// Launcher picks how the daemon enters the node namespace (see LaunchDefault).
	Launcher Launcher
	// Args are extra arguments for `svcproxy run`.
	Args []string
}

// Daemon is one svcproxy daemon of a sandbox: its config file, state directory and API
// socket stay the same across restarts.
type Daemon struct {
	Opts       DaemonOptions
	ConfigPath string
	StateDir   string
	APISocket  string

	s    *Sandbox
	proc *Process
	cfg  *ProxyConfig
	runs int
}

// NewDaemon prepares (but does not start) a daemon with its files under the sandbox's Dir.
func (s *Sandbox) NewDaemon(opts DaemonOptions) *Daemon {
	if opts.NodeName == "" {
		opts.NodeName = "node1"
	}
	if opts.Launcher == LaunchDefault {
		opts.Launcher = Nsenter
		if opts.Mode == "iptables" {
			opts.Launcher = IPNetnsExec
		}
	}
	dir := filepath.Join(s.Dir, "svcproxy")
	return &Daemon{
		Opts:       opts,
		ConfigPath: filepath.Join(dir, "config.yaml"),
		StateDir:   filepath.Join(dir, "state"),
		APISocket:  filepath.Join(s.RunDir, "svcproxy.sock"),
		s:          s,
	}
}

func (s *Sandbox) ebpfSettings() *EBPF {
	e := &EBPF{CgroupPath: s.Cgroup}
	if s.BPFFS != "" {
		e.PinPath = filepath.Join(s.BPFFS, "svcproxy")
	}
	if s.External != nil {
		e.Interfaces = []string{"eth0"}
	}
	if e.CgroupPath == "" && e.PinPath == "" && e.Interfaces == nil {
		return nil
	}
	return e
}

// Config returns the last config written (nil before WriteConfig).
func (d *Daemon) Config() *ProxyConfig { return d.cfg }

// WriteConfig writes cfg to the config file (atomically, by rename), filling in the state
// directory and API socket, and, unless cfg sets them, the eBPF backend's settings that keep
// it inside the sandbox: the sandbox's cgroup, a pin path on the sandbox's bpffs, and the
// node's underlay interface.
func (d *Daemon) WriteConfig(cfg *ProxyConfig) error {
	c := *cfg
	c.StateDir = d.StateDir
	c.APISocket = d.APISocket
	if c.EBPF == nil {
		c.EBPF = d.s.ebpfSettings()
	}
	data, err := c.Marshal()
	if err != nil {
		return fmt.Errorf("netns: render config: %w", err)
	}
	if err := d.WriteRaw(data); err != nil {
		return err
	}
	d.cfg = &c
	return nil
}

// WriteConfigInPlace writes cfg like WriteConfig, but by truncating and rewriting the
// existing file (as `cat > FILE` or many editors do), so a watcher may see it empty or half
// written for a moment.
func (d *Daemon) WriteConfigInPlace(cfg *ProxyConfig) error {
	c := *cfg
	c.StateDir = d.StateDir
	c.APISocket = d.APISocket
	if c.EBPF == nil {
		c.EBPF = d.s.ebpfSettings()
	}
	data, err := c.Marshal()
	if err != nil {
		return fmt.Errorf("netns: render config: %w", err)
	}
	if err := os.WriteFile(d.ConfigPath, data, 0o600); err != nil {
		return fmt.Errorf("netns: write config in place: %w", err)
	}
	d.cfg = &c
	return nil
}

// WriteRaw writes data as the config file as it is (for invalid configs).
func (d *Daemon) WriteRaw(data []byte) error {
	if err := os.MkdirAll(filepath.Dir(d.ConfigPath), 0o700); err != nil {
		return fmt.Errorf("netns: config dir: %w", err)
	}
	if err := writeFileAtomic(d.ConfigPath, data); err != nil {
		return fmt.Errorf("netns: write config: %w", err)
	}
	return nil
}

// commonArgs are the flags every svcproxy command of this daemon gets.
func (d *Daemon) commonArgs() []string {
	args := []string{"--config", d.ConfigPath, "--state-dir", d.StateDir, "--api-socket", d.APISocket, "--node-name", d.Opts.NodeName}
	if d.Opts.Mode != "" {
		args = append(args, "--mode", d.Opts.Mode)
	}
	return args
}

// Start starts `svcproxy run` in the node namespace. Call WaitReady next.
func (d *Daemon) Start(ctx context.Context) error {
	if d.proc != nil && !d.proc.Exited() {
		return errors.New("netns: daemon already running")
	}
	d.runs++
	argv := append([]string{d.Opts.Bin, "run"}, d.commonArgs()...)
	argv = append(argv, "-v", "1")
	argv = append(argv, d.Opts.Args...)
	p, err := d.s.Start(ctx, ProcSpec{Name: fmt.Sprintf("svcproxy-run%d", d.runs), NS: d.s.Node, Argv: argv, Launcher: d.Opts.Launcher})
	if err != nil {
		return err
	}
	d.proc = p
	return nil
}

// Process is the running (or last) daemon process.
func (d *Daemon) Process() *Process { return d.proc }

// Status runs `svcproxy status --json` against the daemon's socket.
func (d *Daemon) Status(ctx context.Context) (*api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.Opts.Bin, "status", "--json", "--api-socket", d.APISocket)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("svcproxy status --json: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	st := &api.Status{}
	if err := json.Unmarshal(stdout.Bytes(), st); err != nil {
		return nil, fmt.Errorf("svcproxy status --json: bad JSON %q: %w", stdout.String(), err)
	}
	return st, nil
}

// Healthz GETs path (/readyz, /healthz, /livez) on the config's healthzBindAddress from inside
// the node namespace and reports whether it answered 200.
func (d *Daemon) Healthz(ctx context.Context, path string) (bool, error) {
	addr := "127.0.0.1:10256"
	if d.cfg != nil && d.cfg.HealthzBindAddress != "" {
		addr = d.cfg.HealthzBindAddress
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false, fmt.Errorf("netns: healthzBindAddress %q: %w", addr, err)
	}
	if ap.Addr().IsUnspecified() {
		ap = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ap.Port())
	}
	res, err := d.s.Probe(ctx, d.s.Node, ProbeSpec{Proto: HTTP, Addr: ap, Path: path, Count: 1, Parallel: 1, Timeout: 2 * time.Second})
	if err != nil {
		return false, err
	}
	return res.OK() == 1, nil
}

// Metric returns the value of the metric sample whose line starts with name (a metric name,
// optionally with its labels, e.g. `svcproxy_config_reload_failures_total`) on the config's
// metricsBindAddress /metrics, read from inside the node namespace.
func (d *Daemon) Metric(ctx context.Context, name string) (float64, error) {
	addr := "127.0.0.1:10249"
	if d.cfg != nil && d.cfg.MetricsBindAddress != "" {
		addr = d.cfg.MetricsBindAddress
	}
	code, body, err := d.s.HTTPGet(ctx, d.s.Node, "http://"+addr+"/metrics")
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("netns: GET /metrics: status %d", code)
	}
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			f := strings.Fields(line)
			var v float64
			if _, err := fmt.Sscan(f[len(f)-1], &v); err != nil {
				return 0, fmt.Errorf("netns: metric line %q: %w", line, err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("netns: metric %s not exposed", name)
}

// WaitReady waits until /readyz answers 200 and status shows the desired generation applied.
// It fails early when the daemon exits.
func (d *Daemon) WaitReady(ctx context.Context, timeout time.Duration) (*api.Status, error) {
	return d.waitFor(ctx, timeout, "ready", func(ctx context.Context) (*api.Status, bool, error) {
		if ok, err := d.Healthz(ctx, "/readyz"); err != nil || !ok {
			return nil, false, err
		}
		st, err := d.Status(ctx)
		if err != nil {
			return nil, false, nil // the socket may not be up yet
		}
		return st, st.DesiredGeneration > 0 && st.AppliedGeneration >= st.DesiredGeneration && st.LastSyncError == "", nil
	})
}

// Reload writes cfg and waits until the daemon has applied it: status shows a desired
// generation newer than before the write, applied, with no config error.
func (d *Daemon) Reload(ctx context.Context, cfg *ProxyConfig, timeout time.Duration) (*api.Status, error) {
	before, err := d.Status(ctx)
	if err != nil {
		return nil, err
	}
	if err := d.WriteConfig(cfg); err != nil {
		return nil, err
	}
	return d.WaitApplied(ctx, before.DesiredGeneration, timeout)
}

// WaitApplied waits until status shows a desired generation above prev, applied, and no
// config error.
func (d *Daemon) WaitApplied(ctx context.Context, prev uint64, timeout time.Duration) (*api.Status, error) {
	return d.waitFor(ctx, timeout, fmt.Sprintf("generation > %d applied", prev), func(ctx context.Context) (*api.Status, bool, error) {
		st, err := d.Status(ctx)
		if err != nil {
			return nil, false, err
		}
		return st, st.DesiredGeneration > prev && st.AppliedGeneration >= st.DesiredGeneration && st.ConfigError == "", nil
	})
}

// ReloadInvalid writes data (an invalid config) and waits until status shows a config error.
func (d *Daemon) ReloadInvalid(ctx context.Context, data []byte, timeout time.Duration) (*api.Status, error) {
	if err := d.WriteRaw(data); err != nil {
		return nil, err
	}
	return d.waitFor(ctx, timeout, "config error shown", func(ctx context.Context) (*api.Status, bool, error) {
		st, err := d.Status(ctx)
		if err != nil {
			return nil, false, err
		}
		return st, st.ConfigError != "", nil
	})
}

func (d *Daemon) waitFor(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) (*api.Status, bool, error)) (*api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last *api.Status
	var lastErr error
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st, ok, err := cond(ctx)
		if st != nil {
			last = st
		}
		if err != nil {
			lastErr = err
		}
		if ok {
			return st, nil
		}
		var exited <-chan struct{}
		if d.proc != nil {
			exited = d.proc.Done()
		}
		select {
		case <-exited:
			return last, fmt.Errorf("netns: svcproxy exited (%v) while waiting for %s; log:\n%s", d.proc.exitErr(), what, d.proc.Log())
		case <-ctx.Done():
			b, _ := json.MarshalIndent(last, "", "  ")
			return last, fmt.Errorf("netns: svcproxy: not %s within %v (last error: %v); last status:\n%s", what, timeout, lastErr, b)
		case <-tick.C:
		}
	}
}

// Stop sends sig (SIGTERM or SIGKILL) to the daemon by PID and waits for it to exit. It
// returns the process's exit error (nil for status 0).
func (d *Daemon) Stop(ctx context.Context, sig syscall.Signal, timeout time.Duration) error {
	if d.proc == nil {
		return errors.New("netns: daemon never started")
	}
	if err := d.proc.Signal(sig); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return d.proc.Wait(ctx)
}

// Cleanup runs `svcproxy cleanup` in the node namespace and returns its output.
func (d *Daemon) Cleanup(ctx context.Context) (string, error) {
	return d.Exec(ctx, "cleanup")
}

// Exec runs `svcproxy CMD <common flags> args...` in the node namespace (the way Start does)
// and returns its combined output.
func (d *Daemon) Exec(ctx context.Context, cmd string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	argv := append([]string{d.Opts.Bin, cmd}, d.commonArgs()...)
	argv = append(argv, args...)
	var full []string
	switch d.Opts.Launcher {
	case Nsenter:
		full = append([]string{"nsenter", "--net=" + d.s.Node.Path(), "--"}, argv...)
	default:
		full = append([]string{"ip", "netns", "exec", d.s.Node.Name}, argv...)
	}
	out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("svcproxy %s: %w: %s", cmd, err, out)
	}
	return string(out), nil
}
