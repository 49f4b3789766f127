// Package cnibench measures how long a pod's network takes to set up and tear down through
// svcproxy-cni (with the real svcproxy daemon behind it) and through the reference CNI
// plugins bridge + host-local, both driven by the reference client cnitool run inside one
// node namespace, on the same pod namespaces, in alternating rounds. It reports medians and
// 90th percentiles over the pods as a markdown table.
//
// Everything lives in network namespaces the run makes (test/netns sandboxes) and is removed
// at the end. It needs root.
package cnibench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/svcproxy/svcproxy/test/netns"
)

// Package paths of the reference plugins (tools of the module, see go.mod).
const (
	BridgePkg    = "github.com/containernetworking/plugins/plugins/main/bridge"
	HostLocalPkg = "github.com/containernetworking/plugins/plugins/ipam/host-local"
)

// Plugin names as they appear in the report.
const (
	Svcproxy  = "svcproxy-cni"
	Reference = "bridge+host-local"
)

// Address ranges, all inside the cluster range 10.244.0.0/16 of the sandbox.
var (
	// SvcproxyRange is the daemon's podCIDR (a /20, so round-robin allocation with the 30 s
	// cooldown never runs out within the bounded number of pods).
	SvcproxyRange = netip.MustParsePrefix(SvcproxyRangeText)
	// ReferenceRange is host-local's subnet on the reference bridge.
	ReferenceRange = netip.MustParsePrefix(ReferenceRangeText)
)

// ReferenceBridge is the reference plugin's bridge in the node namespace.
const ReferenceBridge = "cnibr0"

// Bounds of Options.
const (
	DefaultPods   = 50
	MaxPods       = 250
	DefaultRounds = 10
	MaxRounds     = 20
)

// Options shape a run.
type Options struct {
	// Pods per round and plugin (DefaultPods when 0, at most MaxPods).
	Pods int
	// Rounds per plugin (DefaultRounds when 0, at most MaxRounds); the plugin that goes first
	// alternates between rounds.
	Rounds int
	// Svcproxy is the svcproxy daemon binary.
	Svcproxy string
	// Bin holds cnitool, svcproxy-cni, bridge, host-local and podserver (see Build).
	Bin string
	// Logger receives progress; slog.Default() when nil.
	Logger *slog.Logger
}

func (o *Options) normalize() error {
	if o.Pods == 0 {
		o.Pods = DefaultPods
	}
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
	}
	if o.Pods < 1 || o.Pods > MaxPods {
		return fmt.Errorf("cnibench: pods %d: must be 1..%d", o.Pods, MaxPods)
	}
	if o.Rounds < 1 || o.Rounds > MaxRounds {
		return fmt.Errorf("cnibench: rounds %d: must be 1..%d", o.Rounds, MaxRounds)
	}
	if o.Svcproxy == "" || o.Bin == "" {
		return errors.New("cnibench: needs the svcproxy binary and the CNI binary directory")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Build fills dir with cnitool, svcproxy-cni (see netns.BuildCNI), bridge, host-local and the
// harness's podserver.
func Build(ctx context.Context, dir string) error {
	if err := netns.BuildCNI(ctx, dir); err != nil {
		return err
	}
	// podserver answers the daemon's readiness probe from inside the node namespace.
	for _, b := range []struct{ pkg, name string }{{BridgePkg, "bridge"}, {HostLocalPkg, "host-local"}, {netns.PodServerPkg, "podserver"}} {
		if err := netns.GoBuild(ctx, b.pkg, filepath.Join(dir, b.name)); err != nil {
			return err
		}
	}
	return nil
}

// Samples are the per-pod latencies of one plugin, for each round.
type Samples struct {
	Add [][]time.Duration
	Del [][]time.Duration
}

// Run measures both plugins and returns the raw samples per plugin name.
func Run(ctx context.Context, opts Options) (map[string]*Samples, error) {
	if err := opts.normalize(); err != nil {
		return nil, err
	}
	log := opts.Logger
	dir, err := os.MkdirTemp("", "cnibench-")
	if err != nil {
		return nil, fmt.Errorf("cnibench: scratch dir: %w", err)
	}
	defer os.RemoveAll(dir)
	s, err := netns.New(ctx, netns.Options{Dir: filepath.Join(dir, "sandbox"), Logger: log, PodServer: filepath.Join(opts.Bin, "podserver")})
	if err != nil {
		return nil, fmt.Errorf("cnibench: sandbox: %w", err)
	}
	defer func() {
		if cerr := s.Close(); cerr != nil {
			log.Error("cnibench: tear down sandbox", "err", cerr)
		}
	}()
	nets, err := setup(ctx, s, opts, dir)
	if err != nil {
		return nil, err
	}
	for _, n := range nets {
		defer n.cni.Close()
	}
	pods := make([]*netns.Namespace, opts.Pods)
	for i := range pods {
		if pods[i], err = s.AddNamespace(ctx, fmt.Sprintf("p%d", i)); err != nil {
			return nil, err
		}
	}
	out := map[string]*Samples{}
	for _, n := range nets {
		out[n.name] = &Samples{}
	}
	// Warm-up, not measured: each plugin makes its bridge, page cache and the daemon's first
	// syncs settle.
	warm := pods[:min(len(pods), 10)]
	for _, n := range nets {
		if _, _, err := n.round(ctx, warm); err != nil {
			return nil, fmt.Errorf("cnibench: warm-up, %s: %w", n.name, err)
		}
	}
	for r := 0; r < opts.Rounds; r++ {
		order := []*network{nets[0], nets[1]}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, n := range order {
			add, del, err := n.round(ctx, pods)
			if err != nil {
				return nil, fmt.Errorf("cnibench: round %d, %s: %w", r+1, n.name, err)
			}
			out[n.name].Add = append(out[n.name].Add, add)
			out[n.name].Del = append(out[n.name].Del, del)
			log.Info("round done", "round", r+1, "plugin", n.name, "add_median", median(add), "del_median", median(del))
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	for _, n := range nets {
		if n.after != nil {
			if err := n.after(ctx); err != nil {
				return nil, fmt.Errorf("cnibench: %s after the run: %w", n.name, err)
			}
		}
	}
	return out, nil
}

// network is one plugin's CNI network on the node.
type network struct {
	name   string
	cni    *netns.CNI
	args   netns.CNIArgs
	subnet netip.Prefix
	// after checks the plugin's state once every pod was deleted again.
	after func(context.Context) error
}

// setup starts the svcproxy daemon and writes both conflists.
func setup(ctx context.Context, s *netns.Sandbox, opts Options, dir string) ([]*network, error) {
	// The sandbox pre-makes a pod bridge; both plugins make their own instead.
	if err := runCmd(ctx, "ip", "-n", s.Node.Name, "link", "del", netns.BridgeName); err != nil {
		return nil, err
	}
	d := s.NewDaemon(netns.DaemonOptions{Bin: opts.Svcproxy, Mode: "iptables"})
	cfg := netns.BaseConfig(d.Opts.NodeName, "iptables")
	cfg.PodCIDR = SvcproxyRange.String()
	// A selector service: every ADD and DEL changes its endpoints, as on a busy node.
	cfg.Services = []netns.Service{{Name: "bench", ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "bench"},
		Ports: []netns.ServicePort{{Name: "http", Protocol: "TCP", Port: 80, TargetPort: 8080}}}}
	if err := d.WriteConfig(cfg); err != nil {
		return nil, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, err
	}
	if _, err := d.WaitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	sc, err := s.NewCNI(opts.Bin, "1.1.0", netns.SvcproxyPlugin(d.APISocket))
	if err != nil {
		return nil, err
	}
	sc.Launcher = netns.Nsenter
	dataDir := filepath.Join(dir, "host-local")
	gw := ReferenceRange.Addr().Next()
	rc, err := s.NewCNI(opts.Bin, "1.1.0", map[string]any{
		"type": "bridge", "bridge": ReferenceBridge, "isDefaultGateway": true, "hairpinMode": true,
		"ipam": map[string]any{"type": "host-local", "dataDir": dataDir,
			"ranges": [][]map[string]any{{{"subnet": ReferenceRange.String(), "gateway": gw.String()}}}},
	})
	if err != nil {
		sc.Close()
		return nil, err
	}
	rc.Launcher = netns.Nsenter
	svc := &network{name: Svcproxy, cni: sc, subnet: SvcproxyRange,
		args: netns.CNIArgs{PodName: "bench", Labels: map[string]string{"app": "bench"}},
		after: func(ctx context.Context) error {
			st, err := d.Status(ctx)
			if err != nil {
				return err
			}
			for _, r := range st.IPAM {
				if r.Kind == "pod" && r.Used != 0 {
					return fmt.Errorf("daemon still holds %d pod IPs of %s after every DEL", r.Used, r.Range)
				}
			}
			return nil
		}}
	ref := &network{name: Reference, cni: rc, subnet: ReferenceRange,
		after: func(context.Context) error {
			left, _ := filepath.Glob(filepath.Join(dataDir, "*", "10.*"))
			if len(left) > 0 {
				return fmt.Errorf("host-local still holds %d addresses after every DEL: %v", len(left), left)
			}
			return nil
		}}
	return []*network{svc, ref}, nil
}

// round adds every pod, then deletes every pod, one at a time, timing each cnitool call.
func (n *network) round(ctx context.Context, pods []*netns.Namespace) (add, del []time.Duration, err error) {
	seen := map[netip.Addr]bool{}
	for _, p := range pods {
		start := time.Now()
		res, err := n.cni.Add(ctx, p, n.args)
		d := time.Since(start)
		if err != nil {
			return nil, nil, err
		}
		ip, err := netns.PodIPv4(res)
		if err != nil {
			return nil, nil, err
		}
		if !n.subnet.Contains(ip) || seen[ip] {
			return nil, nil, fmt.Errorf("ADD of %s gave %v: want a fresh address in %s", p.Name, ip, n.subnet)
		}
		seen[ip] = true
		add = append(add, d)
	}
	for _, p := range pods {
		start := time.Now()
		if out, err := n.cni.Cnitool(ctx, "del", p, n.args); err != nil {
			return nil, nil, fmt.Errorf("DEL of %s: %w (%s)", p.Name, err, out)
		}
		del = append(del, time.Since(start))
	}
	return add, del, nil
}
