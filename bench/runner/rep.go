package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/bench/load"
	"github.com/svcproxy/svcproxy/bench/stats"
	"github.com/svcproxy/svcproxy/bench/workload"
	"github.com/svcproxy/svcproxy/test/netns"
)

type addr = netip.Addr

// The sandbox's pods get these addresses (netns hands out .10, .11, ... in order).
var (
	podA = netip.MustParseAddr("10.244.1.10")
	podB = netip.MustParseAddr("10.244.1.11")
	// clientIP is explicit: the harness numbers pods without an address from .10 up.
	clientIP = netip.MustParseAddr("10.244.1.20")
)

const (
	nodeName   = "node1"
	serverPort = 8080 // the line server, the services' targetPort
	// directPort is the same server on another port, for direct-to-pod probes: direct and VIP
	// connections then never share a 4-tuple, so a direct SYN cannot hit the reply side of a
	// VIP connection's conntrack entry still in TIME_WAIT (which netfilter would drop).
	directPort  = 8081
	sinkPort    = 9090 // the stream sink
	metricsAddr = "127.0.0.1:10249"
	healthzAddr = "127.0.0.1:10256"
)

// daemon is what a rep runs: svcproxy or kube-proxy, with how to read its state.
type daemon struct {
	proc       *netns.Process
	metricName string // histogram prefix: svcproxy_ or kubeproxy_
	readyz     bool   // svcproxy: also wait for /readyz
	http       *nsHTTP
	// applyChange points the change service at ip (file rewrite or API update) and returns
	// the time the change was made.
	applyChange func(ctx context.Context, ip netip.Addr) (time.Time, error)
	cleanup     func(ctx context.Context)
	// start starts the daemon process again with the same arguments (a restart).
	start func(ctx context.Context) (*netns.Process, error)
}

func (d *daemon) metrics(ctx context.Context) (stats.Metrics, error) {
	code, body, err := d.http.get(ctx, "http://"+metricsAddr+"/metrics")
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("/metrics answered %d", code)
	}
	return stats.ParseMetrics(body)
}

func (d *daemon) full() string    { return d.metricName + "sync_full_proxy_rules_duration_seconds" }
func (d *daemon) partial() string { return d.metricName + "sync_partial_proxy_rules_duration_seconds" }

// runRep builds a sandbox, starts the daemon of the case in its node namespace, measures,
// and removes everything. It returns how long the daemon took to become ready.
func (r *Run) runRep(ctx context.Context, res *Result, rep int, last bool) (time.Duration, error) {
	c := res.Case
	r.seq++
	dir := filepath.Join(r.opts.WorkDir, fmt.Sprintf("%02d-%s-%s-%s-%d-r%d", r.seq, c.Impl, c.Mode, c.Source, c.Services, rep+1))
	sb, err := netns.New(ctx, netns.Options{
		Pods:   []netns.PodSpec{{Name: "pod-a", IP: podA}, {Name: "pod-b", IP: podB}, {Name: "client", IP: clientIP}},
		Cgroup: c.Impl == "svcproxy",
		Dir:    dir,
		Logger: r.log,
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		if err := sb.Close(); err != nil {
			r.log.Error("sandbox teardown", "sandbox", sb.ID, "err", err)
		}
	}()
	for _, p := range []string{"pod-a", "pod-b"} {
		pod := sb.Pod(p)
		if _, err := sb.Start(ctx, netns.ProcSpec{Name: "server-" + p, NS: &pod.Namespace, ReadyLine: "ready",
			Argv: []string{r.opts.Self, "serve", "--name", p, "--line", fmt.Sprintf(":%d", serverPort), "--line", fmt.Sprintf(":%d", directPort), "--sink", fmt.Sprintf(":%d", sinkPort)}}); err != nil {
			return 0, err
		}
	}
	client := sb.Pod("client")
	var data *DataResult
	if c.Data && last {
		data = &DataResult{}
		// The physical floor: straight to the pod, before any proxy rule exists.
		for i := 0; i < r.opts.Rounds; i++ {
			rr, err := r.rate(ctx, sb, client, netip.AddrPortFrom(podA, directPort))
			if err != nil {
				return 0, fmt.Errorf("floor round: %w", err)
			}
			data.FloorRate = append(data.FloorRate, rr.Rate)
			data.FloorP50 = append(data.FloorP50, rr.P50)
			data.FloorP99 = append(data.FloorP99, rr.P99)
			data.Failed += rr.Failed
		}
	}
	var d *daemon
	start := time.Now()
	switch {
	case c.Impl == "svcproxy":
		d, err = r.startSvcproxy(ctx, sb, c, dir)
	default:
		d, err = r.startKubeProxy(ctx, sb, c, dir)
	}
	if err != nil {
		return 0, err
	}
	if d.cleanup != nil {
		defer d.cleanup(context.Background())
	}
	defer func() { d.proc.Stop(context.Background(), 10*time.Second) }()
	if r.opts.PerfDir != "" && c.Impl == "svcproxy" {
		out := filepath.Join(r.opts.PerfDir, strings.ReplaceAll(c.ID(), "/", "_")+fmt.Sprintf("-r%d.perf.data", rep+1))
		perf := exec.Command("perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(d.proc.PID()), "-o", out)
		perf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := perf.Start(); err != nil {
			return 0, fmt.Errorf("perf record: %w", err)
		}
		defer func() {
			perf.Process.Signal(syscall.SIGINT)
			perf.Wait()
		}()
	}
	cold, wall, err := r.waitReady(ctx, d, start, c)
	if err != nil {
		return time.Since(start), err
	}
	res.ColdMetric = append(res.ColdMetric, cold)
	res.ColdWall = append(res.ColdWall, wall.Seconds())
	r.log.Info("ready", "case", c.ID(), "rep", rep+1, "fullSync", stats.Seconds(cold), "wall", wall.Round(time.Millisecond))

	if last {
		n, lines, what, err := r.countRules(ctx, sb, c)
		if err != nil {
			res.Errors = append(res.Errors, "rule count: "+err.Error())
		} else {
			res.Rules = append(res.Rules, n)
			res.RuleLines = append(res.RuleLines, lines)
			res.RulesWhat = what
		}
	}
	// A first connection through the VIP proves the rules work before anything is timed.
	probeVIP := netip.AddrPortFrom(workload.VIP(workload.Spec{Services: c.Services}.ProbeIndex()), workload.Port)
	if _, err := r.watch(ctx, sb, client, probeVIP, "", 30*time.Second); err != nil {
		return wall, fmt.Errorf("the probe service does not answer through its VIP: %w", err)
	}
	if c.Change && last {
		if err := r.measureChanges(ctx, sb, client, d, res); err != nil {
			res.Errors = append(res.Errors, "endpoint change: "+err.Error())
		}
	}
	if data != nil {
		cpu0, _ := cpuSeconds(d.proc.PID())
		t0 := time.Now()
		err := r.measureData(ctx, sb, client, probeVIP, data)
		if cpu1, cerr := cpuSeconds(d.proc.PID()); cerr == nil {
			data.DaemonCPU = (cpu1 - cpu0) / time.Since(t0).Seconds()
		}
		if err != nil {
			res.Errors = append(res.Errors, "data path: "+err.Error())
		}
		if out, err := runCmd(ctx, "ip", "netns", "exec", sb.Node.Name, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"); err == nil {
			data.Conntrack, _ = strconv.Atoi(strings.TrimSpace(out))
		}
		res.Data = data
	}
	if hwm, err := vmHWM(d.proc.PID()); err == nil {
		res.RSS = append(res.RSS, hwm)
	} else {
		res.Errors = append(res.Errors, "rss: "+err.Error())
	}
	if d.proc.Exited() {
		return wall, fmt.Errorf("%s exited during the measurements; log %s", c.Impl, d.proc.LogPath)
	}
	if last {
		// A restart: the rules (and svcproxy's IPAM state) are still there.
		if err := d.proc.Stop(ctx, 30*time.Second); err != nil {
			return wall, err
		}
		t0 := time.Now()
		p, err := d.start(ctx)
		if err != nil {
			return wall, fmt.Errorf("restart: %w", err)
		}
		d.proc = p
		cold, rwall, err := r.waitReady(ctx, d, t0, c)
		if err != nil {
			return wall, fmt.Errorf("restart: %w", err)
		}
		res.RestartMetric = append(res.RestartMetric, cold)
		res.RestartWall = append(res.RestartWall, rwall.Seconds())
		r.log.Info("ready after restart", "case", c.ID(), "fullSync", stats.Seconds(cold), "wall", rwall.Round(time.Millisecond))
	}
	return wall, nil
}

// waitReady polls until the first full sync is in the daemon's histogram (and, for svcproxy,
// /readyz answers 200). It returns the first full sync's duration and the wall time from
// start.
func (r *Run) waitReady(ctx context.Context, d *daemon, start time.Time, c Case) (float64, time.Duration, error) {
	limit := 3*time.Minute + time.Duration(c.Services)*30*time.Millisecond
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var lastErr error
	for {
		if d.proc.Exited() {
			return 0, 0, fmt.Errorf("%s exited before it was ready (code %d); last lines of %s:\n%s", c.Impl, d.proc.ExitCode(), d.proc.LogPath, tail(d.proc.LogPath, 15))
		}
		ok, cold, err := r.readyOnce(ctx, d)
		if ok {
			return cold, time.Since(start), nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return 0, 0, fmt.Errorf("%s not ready within %v (last: %v); last lines of %s:\n%s", c.Impl, limit, lastErr, d.proc.LogPath, tail(d.proc.LogPath, 15))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *Run) readyOnce(ctx context.Context, d *daemon) (bool, float64, error) {
	if d.readyz {
		code, _, err := d.http.get(ctx, "http://"+healthzAddr+"/readyz")
		if err != nil {
			return false, 0, err
		}
		if code != 200 {
			return false, 0, fmt.Errorf("/readyz answered %d", code)
		}
	}
	m, err := d.metrics(ctx)
	if err != nil {
		return false, 0, err
	}
	sum, count, ok := m.Histogram(d.full())
	if !ok || count < 1 {
		return false, 0, fmt.Errorf("no full sync in %s yet", d.full())
	}
	return true, sum / count, nil
}

// measureChanges swaps the change service's endpoint between pod-a and pod-b, and times each
// swap until the new pod answers through the VIP (fresh connections, so fresh conntrack
// entries and a new rule lookup each). Changes are spaced so that neither proxy's minimum
// sync interval (1 s) delays them.
func (r *Run) measureChanges(ctx context.Context, sb *netns.Sandbox, client *netns.Pod, d *daemon, res *Result) error {
	vip := netip.AddrPortFrom(workload.VIP(workload.Spec{Services: res.Services}.ChangeIndex()), workload.Port)
	if _, err := r.watch(ctx, sb, client, vip, "pod-a", 30*time.Second); err != nil {
		return fmt.Errorf("change service before any change: %w", err)
	}
	targets := []struct {
		ip   netip.Addr
		name string
	}{{podB, "pod-b"}, {podA, "pod-a"}}
	for i := 0; i < r.opts.Changes; i++ {
		t := targets[i%2]
		time.Sleep(1500 * time.Millisecond)
		before, err := d.metrics(ctx)
		if err != nil {
			return err
		}
		w, err := r.startWatch(ctx, sb, client, vip, t.name, time.Minute)
		if err != nil {
			return err
		}
		t0, err := d.applyChange(ctx, t.ip)
		if err != nil {
			w.stop()
			return err
		}
		seen, err := w.wait()
		if err != nil {
			return err
		}
		res.ChangeWall = append(res.ChangeWall, seen.Sub(t0).Seconds())
		// The sync that applied it: wait for its histogram sample.
		for k := 0; k < 100; k++ {
			after, err := d.metrics(ctx)
			if err != nil {
				return err
			}
			if v, n := after.MeanSince(before, d.partial()); n > 0 {
				res.ChangeMetric = append(res.ChangeMetric, v)
				res.ChangeKind = "partial"
				break
			}
			if v, n := after.MeanSince(before, d.full()); n > 0 {
				res.ChangeMetric = append(res.ChangeMetric, v)
				res.ChangeKind = "full"
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.log.Info("endpoint change", "case", res.ID(), "to", t.name, "wall", seen.Sub(t0).Round(time.Millisecond))
	}
	return nil
}

// measureData alternates VIP and direct rounds (the order flips every round), then streams.
func (r *Run) measureData(ctx context.Context, sb *netns.Sandbox, client *netns.Pod, vip netip.AddrPort, data *DataResult) error {
	direct := netip.AddrPortFrom(podA, directPort)
	for i := 0; i < r.opts.Rounds; i++ {
		order := []bool{true, false}
		if i%2 == 1 {
			order = []bool{false, true}
		}
		for _, viaVIP := range order {
			a := direct
			if viaVIP {
				a = vip
			}
			rr, err := r.rate(ctx, sb, client, a)
			if err != nil {
				return err
			}
			data.Failed += rr.Failed
			if viaVIP {
				data.VIPRate, data.VIPP50, data.VIPP99 = append(data.VIPRate, rr.Rate), append(data.VIPP50, rr.P50), append(data.VIPP99, rr.P99)
			} else {
				data.DirectRate, data.DirectP50, data.DirectP99 = append(data.DirectRate, rr.Rate), append(data.DirectP50, rr.P50), append(data.DirectP99, rr.P99)
			}
		}
	}
	streamVIP := netip.AddrPortFrom(vip.Addr(), workload.SinkPort)
	for i := 0; i < r.opts.StreamRounds; i++ {
		// Through the VIP the sink is reached on the probe service's second port.
		for _, viaVIP := range []bool{i%2 == 0, i%2 == 1} {
			a := netip.AddrPortFrom(podA, sinkPort)
			if viaVIP {
				a = streamVIP
			}
			var out load.StreamResult
			if err := r.self(ctx, sb, client, &out, "stream", "--addr", a.String(), "--duration", r.opts.StreamTime.String()); err != nil {
				return err
			}
			if viaVIP {
				data.VIPGbps = append(data.VIPGbps, out.Gbps)
			} else {
				data.DirectGbps = append(data.DirectGbps, out.Gbps)
			}
		}
	}
	return nil
}

func (r *Run) rate(ctx context.Context, sb *netns.Sandbox, client *netns.Pod, a netip.AddrPort) (load.RateResult, error) {
	var out load.RateResult
	err := r.self(ctx, sb, client, &out, "load", "--addr", a.String(), "--workers", strconv.Itoa(r.opts.Workers),
		"--duration", r.opts.RoundTime.String(), "--max", "2000000", "--timeout", "1s")
	if err == nil && out.OK == 0 {
		err = fmt.Errorf("no connection to %s succeeded: %v", a, out.Errors)
	}
	return out, err
}

// self runs `svcbench ARGS` in the client pod (inside the sandbox's cgroup, where an eBPF
// socket-LB attaches) and decodes its JSON output into out.
func (r *Run) self(ctx context.Context, sb *netns.Sandbox, ns *netns.Pod, out any, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := r.selfCmd(ctx, sb, ns, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("svcbench %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("svcbench %s: bad output %q: %w", args[0], b, err)
	}
	return nil
}

func (r *Run) selfCmd(ctx context.Context, sb *netns.Sandbox, ns *netns.Pod, args ...string) *exec.Cmd {
	argv := append([]string{"netns", "exec", ns.Name, r.opts.Self}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if sb.Cgroup != "" {
		if cg, err := os.Open(sb.Cgroup); err == nil {
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(cg.Fd())
			// The fd must stay open until Start; it is closed with the command's context.
			context.AfterFunc(ctx, func() { cg.Close() })
		}
	}
	return cmd
}

// watch waits until want (any pod when "") answers on a.
func (r *Run) watch(ctx context.Context, sb *netns.Sandbox, client *netns.Pod, a netip.AddrPort, want string, timeout time.Duration) (time.Time, error) {
	w, err := r.startWatch(ctx, sb, client, a, want, timeout)
	if err != nil {
		return time.Time{}, err
	}
	return w.wait()
}

type watcher struct {
	cmd  *exec.Cmd
	out  *strings.Builder
	errb *strings.Builder
	stop func()
}

// startWatch starts a watcher in the client pod and returns once it is connecting.
func (r *Run) startWatch(ctx context.Context, sb *netns.Sandbox, client *netns.Pod, a netip.AddrPort, want string, timeout time.Duration) (*watcher, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	args := []string{"watch", "--addr", a.String(), "--timeout", timeout.String(), "--interval", "1ms"}
	if want != "" {
		args = append(args, "--want", want)
	}
	cmd := r.selfCmd(wctx, sb, client, args...)
	pr, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	w := &watcher{cmd: cmd, out: &strings.Builder{}, errb: &strings.Builder{}, stop: cancel}
	cmd.Stderr = w.errb
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	// The first line says the watcher runs; the second is the result.
	buf := make([]byte, 1)
	var line []byte
	for {
		if _, err := pr.Read(buf); err != nil {
			cmd.Wait()
			cancel()
			return nil, fmt.Errorf("watcher: %v: %s", err, w.errb.String())
		}
		if buf[0] == '\n' {
			break
		}
		line = append(line, buf[0])
	}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := pr.Read(b)
			w.out.Write(b[:n])
			if err != nil {
				return
			}
		}
	}()
	_ = line
	return w, nil
}

func (w *watcher) wait() (time.Time, error) {
	defer w.stop()
	err := w.cmd.Wait()
	if err != nil {
		return time.Time{}, fmt.Errorf("watcher: %w: %s", err, strings.TrimSpace(w.errb.String()))
	}
	var res load.WatchResult
	if err := json.Unmarshal([]byte(w.out.String()), &res); err != nil {
		return time.Time{}, fmt.Errorf("watcher output %q: %w", w.out.String(), err)
	}
	return time.Unix(0, res.SeenUnixNano), nil
}

// cpuSeconds returns the CPU time (user + system) a process has used so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

// vmHWM returns the peak resident set of a process (VmHWM, bytes).
func vmHWM(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmHWM:") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, err := strconv.ParseFloat(f[1], 64)
				return kb * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var _ = math.NaN
