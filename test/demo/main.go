// Command demo is what `make demo` runs (as root): it builds a throwaway sandbox out of network
// namespaces (a node with the svc0 bridge, three pods serving their name, a client pod), runs
// the real svcproxy in the node on deploy/examples/demo.yaml, sends a few hundred requests to
// the web service's VIP and shows how they spread over the pods, rewrites the config so the
// endpoints change (pod-c out, a new pod-d in), waits for the reload, shows the new spread, and
// removes everything it made, also on Ctrl-C or error.
//
//	go run ./test/demo [-config deploy/examples/demo.yaml] [-mode auto|iptables|ebpf] [-n 300]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/svcproxy/svcproxy/test/netns"
)

// The pods of demo.yaml.
var (
	podA   = netns.PodSpec{Name: "pod-a", IP: netip.MustParseAddr("10.244.1.11")}
	podB   = netns.PodSpec{Name: "pod-b", IP: netip.MustParseAddr("10.244.1.12")}
	podC   = netns.PodSpec{Name: "pod-c", IP: netip.MustParseAddr("10.244.1.13")}
	podD   = netns.PodSpec{Name: "pod-d", IP: netip.MustParseAddr("10.244.1.14")}
	client = netns.PodSpec{Name: "client", IP: netip.MustParseAddr("10.244.1.100")}
)

func main() {
	configPath := flag.String("config", "", "demo config (default: deploy/examples/demo.yaml of this module)")
	mode := flag.String("mode", "", "backend mode: auto, iptables or ebpf (default: the config's)")
	n := flag.Int("n", 300, "requests per round (1..5000)")
	verbose := flag.Bool("v", false, "log what the harness does")
	flag.Parse()
	if *n < 1 || *n > 5000 {
		fmt.Fprintln(os.Stderr, "demo: -n must be within 1..5000")
		os.Exit(1)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (it creates network namespaces); try: sudo make demo")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	lvl := slog.LevelWarn
	if *verbose {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	d := &demo{out: os.Stdout, log: log, mode: *mode, n: *n, configPath: *configPath}
	err := d.run(ctx)
	d.teardown()
	switch {
	case err != nil && ctx.Err() != nil:
		fmt.Println("\nInterrupted; everything the demo made is removed.")
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

type demo struct {
	out        io.Writer
	log        *slog.Logger
	mode       string
	n          int
	configPath string

	tmp    string
	sb     *netns.Sandbox
	daemon *netns.Daemon
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) run(ctx context.Context) error {
	root, err := netns.ModuleRoot(ctx)
	if err != nil {
		return fmt.Errorf("run the demo from inside the svcproxy source tree: %w", err)
	}
	if d.configPath == "" {
		d.configPath = filepath.Join(root, "deploy", "examples", "demo.yaml")
	}
	raw, err := os.ReadFile(d.configPath)
	if err != nil {
		return err
	}
	var cfg netns.ProxyConfig
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		return fmt.Errorf("%s: %w", d.configPath, err)
	}
	web := findService(&cfg, "web")
	if web == nil || len(web.Ports) == 0 || web.ClusterIP == "" {
		return fmt.Errorf("%s: needs a service \"web\" with a clusterIP and a port", d.configPath)
	}
	vip := netip.AddrPortFrom(netip.MustParseAddr(web.ClusterIP), uint16(web.Ports[0].Port))

	if d.tmp, err = os.MkdirTemp("", "svcproxy-demo-"); err != nil {
		return err
	}
	d.say("svcproxy demo")
	d.say("=============")
	d.say("Building binaries...")
	podServer, err := netns.BuildPodServer(ctx, d.tmp)
	if err != nil {
		return err
	}
	bin := os.Getenv(netns.EnvSvcproxyBin)
	if bin == "" {
		if _, err := os.Stat(filepath.Join(root, "bin", "svcproxy")); err == nil {
			bin = filepath.Join(root, "bin", "svcproxy")
		}
	}
	if bin != "" {
		os.Setenv(netns.EnvSvcproxyBin, bin)
	}
	if bin, err = netns.BuildSvcproxy(ctx, d.tmp); err != nil {
		return err
	}
	d.say("  svcproxy:  %s", bin)

	d.say("\nBuilding the sandbox (network namespaces only this demo uses)...")
	d.sb, err = netns.New(ctx, netns.Options{
		Pods:      []netns.PodSpec{podA, podB, podC, client},
		Cgroup:    true,
		BPFFS:     true,
		Dir:       filepath.Join(d.tmp, "sandbox"),
		Logger:    d.log,
		PodServer: podServer,
	})
	if err != nil {
		return err
	}
	d.say("  node     %-36s bridge %s, gateway %s/%d", d.sb.Node.Name, netns.BridgeName, netns.Gateway, netns.PodPrefix.Bits())
	for _, p := range d.sb.Pods() {
		d.say("  %-8s %-36s %s", p.PodName, p.Name, p.IP)
	}
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		if err := d.serve(ctx, d.sb.Pod(name)); err != nil {
			return err
		}
	}
	d.say("  pod-a, pod-b and pod-c answer every connection with their name (TCP 8080, UDP 5353)")

	// The sandbox's own cgroup and bpffs, whatever the file says: an eBPF data path of the
	// demo must never attach to the host's cgroup root or pin into the host's bpffs.
	cfg.EBPF = nil
	d.daemon = d.sb.NewDaemon(netns.DaemonOptions{Bin: bin, Mode: d.mode, NodeName: cfg.NodeName})
	if err := d.daemon.WriteConfig(&cfg); err != nil {
		return err
	}
	d.say("\nStarting svcproxy in the node namespace with %s ...", rel(root, d.configPath))
	if err := d.daemon.Start(ctx); err != nil {
		return err
	}
	st, err := d.daemon.WaitReady(ctx, time.Minute)
	if err != nil {
		return err
	}
	reason := ""
	if st.ModeReason != "" {
		reason = " (" + st.ModeReason + ")"
	}
	d.say("  ready: pid %d, mode %s%s, %d services", d.daemon.Process().PID(), st.Mode, reason, len(st.Services))

	if err := d.round(ctx, 1, vip, fmt.Sprintf("web endpoints: %s", endpointNames(web))); err != nil {
		return err
	}

	// Change the endpoints: pod-c leaves, a new pod-d joins.
	d.say("\nChanging the endpoints: pod-c leaves, a new pod-d joins...")
	pd, err := d.sb.AddPod(ctx, podD)
	if err != nil {
		return err
	}
	if err := d.serve(ctx, pd); err != nil {
		return err
	}
	d.say("  created pod-d (%s) and started its server", pd.IP)
	var eps []netns.EndpointSpec
	for _, ep := range web.Endpoints {
		if ep.IP != podC.IP.String() {
			eps = append(eps, ep)
		}
	}
	web.Endpoints = append(eps, netns.EndpointSpec{IP: podD.IP.String(), NodeName: cfg.NodeName, Ready: true, Serving: true})
	before, err := d.daemon.Status(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	st, err = d.daemon.Reload(ctx, &cfg, 30*time.Second)
	if err != nil {
		return err
	}
	d.say("  rewrote the config file; svcproxy applied it in %v (generation %d -> %d)",
		time.Since(start).Round(time.Millisecond), before.AppliedGeneration, st.AppliedGeneration)

	if err := d.round(ctx, 2, vip, fmt.Sprintf("web endpoints: %s", endpointNames(web))); err != nil {
		return err
	}
	return nil
}

func (d *demo) serve(ctx context.Context, p *netns.Pod) error {
	_, err := d.sb.StartServer(ctx, p, netns.ServeSpec{TCP: []uint16{8080}, UDP: []uint16{5353}})
	return err
}

// round sends d.n fresh TCP connections from the client pod to vip and prints the spread.
func (d *demo) round(ctx context.Context, i int, vip netip.AddrPort, what string) error {
	d.say("\nRound %d: %d new TCP connections from the client pod to web %s (%s)", i, d.n, vip, what)
	cl := d.sb.Pod("client")
	res, err := d.sb.Probe(ctx, &cl.Namespace, netns.ProbeSpec{Proto: netns.TCP, Addr: vip, Count: d.n, Timeout: 2 * time.Second})
	if err != nil {
		return err
	}
	names := make([]string, 0, len(res.Replies))
	for name := range res.Replies {
		names = append(names, name)
	}
	sort.Strings(names)
	d.say("  %-8s %-14s %7s %7s", "pod", "address", "conns", "share")
	for _, name := range names {
		c := res.Replies[name]
		share := 100 * float64(c) / float64(res.Total())
		addr := ""
		if p := d.sb.Pod(name); p != nil {
			addr = p.IP.String()
		}
		d.say("  %-8s %-14s %7d %6.1f%%  %s", name, addr, c, share, strings.Repeat("#", int(share/2+0.5)))
	}
	if f := res.Failed(); f > 0 {
		d.say("  %-8s %-14s %7d %6.1f%%  (refused %d, unreachable %d, timeout %d, other %d)", "failed", "", f,
			100*float64(f)/float64(res.Total()), res.Refused, res.Unreachable, res.Timeout, f-res.Refused-res.Unreachable-res.Timeout)
		return fmt.Errorf("round %d: %d of %d connections failed", i, f, res.Total())
	}
	return nil
}

// teardown removes everything, whatever state run stopped in, and says what it did.
func (d *demo) teardown() {
	if d.sb == nil && d.tmp == "" {
		return
	}
	d.say("\nCleaning up...")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if d.daemon != nil && d.daemon.Process() != nil {
		if err := d.daemon.Stop(ctx, syscall.SIGTERM, 20*time.Second); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			d.say("  svcproxy exited: %v", err)
		} else {
			d.say("  stopped svcproxy (SIGTERM)")
		}
		if _, err := d.daemon.Cleanup(ctx); err != nil {
			d.say("  svcproxy cleanup failed: %v", err)
		} else {
			d.say("  ran svcproxy cleanup (rules and programs it made are gone)")
		}
	}
	if d.sb != nil {
		n := len(d.sb.Pods()) + 1
		if err := d.sb.Close(); err != nil {
			d.say("  removing the sandbox: %v", err)
		} else {
			d.say("  stopped the pod servers, deleted %d network namespaces (with their veths and bridge), the cgroup and the bpffs mount", n)
		}
	}
	if d.tmp != "" {
		os.RemoveAll(d.tmp)
		d.say("  removed %s", d.tmp)
	}
	d.say("Done: nothing the demo made is left on this machine.")
}

func findService(cfg *netns.ProxyConfig, name string) *netns.Service {
	for i := range cfg.Services {
		if cfg.Services[i].Name == name {
			return &cfg.Services[i]
		}
	}
	return nil
}

func endpointNames(s *netns.Service) string {
	byIP := map[string]string{}
	for _, p := range []netns.PodSpec{podA, podB, podC, podD} {
		byIP[p.IP.String()] = p.Name
	}
	var n []string
	for _, ep := range s.Endpoints {
		if name, ok := byIP[ep.IP]; ok {
			n = append(n, name)
		} else {
			n = append(n, ep.IP)
		}
	}
	return strings.Join(n, ", ")
}

func rel(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
