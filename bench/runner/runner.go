// Package runner runs one benchmark: every case (svcproxy's backends from a config file and
// from the Kubernetes API, upstream kube-proxy in iptables and nftables mode) in network
// namespaces of its own, measured with the same probes, and the report of the figures.
//
// Everything a run makes (namespaces with the harness's run prefix, a cgroup per sandbox, a
// private bpffs for eBPF pins, a control plane in a namespace of its own) is removed when the
// run ends, also on error or when ctx is cancelled (Ctrl-C).
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/bench/workload"
	"github.com/svcproxy/svcproxy/test/netns"
)

// Options of a run.
type Options struct {
	Profile string // quick | full
	// Svcproxy is the svcproxy binary, Self the svcbench binary (for servers and probes in
	// the namespaces), KubeBinDir holds kube-apiserver and kube-proxy.
	Svcproxy   string
	Self       string
	KubeBinDir string
	// WorkDir holds logs and scratch files; removed at the end unless Keep.
	WorkDir string
	Keep    bool
	Logger  *slog.Logger `json:"-"`
	// PerfDir, when set, records a CPU profile of each svcproxy daemon with perf(1) (attached
	// by PID from start to the end of the repetition) into this directory.
	PerfDir string
	// Only, when set, runs only the cases whose ID contains it (for a quick look).
	Only string
	// Data-path probe shape.
	Workers      int
	RoundTime    time.Duration
	Rounds       int
	StreamTime   time.Duration
	StreamRounds int
	Changes      int
}

// Case is one implementation, mode and size.
type Case struct {
	Impl     string // svcproxy | kube-proxy
	Mode     string // iptables | ebpf | nftables
	Flavour  string // nft | legacy (iptables mode)
	Source   string // file | api
	Services int
	Reps     int
	Data     bool
	Change   bool
}

// ID names the case, e.g. "svcproxy/iptables-legacy/file/10000".
func (c Case) ID() string {
	m := c.Mode
	if c.Flavour != "" {
		m += "-" + c.Flavour
	}
	return fmt.Sprintf("%s/%s/%s/%d", c.Impl, m, c.Source, c.Services)
}

// Label is a human name, e.g. "svcproxy iptables (legacy), config file".
func (c Case) Label() string {
	m := c.Mode
	if c.Flavour != "" {
		m += " (" + c.Flavour + ")"
	}
	src := ""
	if c.Impl == "svcproxy" {
		src = map[string]string{"file": ", config file", "api": ", Kubernetes API"}[c.Source]
	}
	return c.Impl + " " + m + src
}

// Result holds every figure of a case; each slice has one value per repetition (or per change
// or round).
type Result struct {
	Case
	ColdMetric   []float64 // first full sync, from the daemon's own histogram (s)
	ColdWall     []float64 // process start to ready (s)
	Rules        []float64 // iptables rules (-A lines), nft rules+elements, or BPF map entries
	RuleLines    []float64 // iptables-save / nft list ruleset lines
	RulesWhat    string
	RSS          []float64 // VmHWM (bytes)
	ChangeWall   []float64 // file write / API update until the new endpoint answers (s)
	ChangeMetric []float64 // the sync that applied it, from the daemon's histogram (s)
	ChangeKind   string    // partial | full
	// RestartWall and RestartMetric: the daemon stopped (SIGTERM) and started again with its
	// rules and state in place, start to ready and its first full sync.
	RestartWall   []float64
	RestartMetric []float64
	Data          *DataResult
	Errors        []string
	Elapsed       time.Duration
}

// DataResult holds the data-path rounds.
type DataResult struct {
	VIPRate, DirectRate, FloorRate []float64 // new connections per second
	VIPP50, DirectP50, FloorP50    []float64 // seconds
	VIPP99, DirectP99, FloorP99    []float64
	VIPGbps, DirectGbps            []float64
	Failed                         int
	// Conntrack is the node namespace's conntrack entry count after the rounds.
	Conntrack int
	// DaemonCPU is the proxy daemon's CPU use during the rounds, in cores (CPU seconds per
	// second): work it does in the background competes with the data path on a small machine.
	DaemonCPU float64
}

// Profile returns the cases of a profile.
func Profile(name string) ([]Case, error) {
	sp := func(mode, fl, src string, n, reps int, data, change bool) Case {
		return Case{Impl: "svcproxy", Mode: mode, Flavour: fl, Source: src, Services: n, Reps: reps, Data: data, Change: change}
	}
	kp := func(mode, fl string, n, reps int, data, change bool) Case {
		return Case{Impl: "kube-proxy", Mode: mode, Flavour: fl, Source: "api", Services: n, Reps: reps, Data: data, Change: change}
	}
	switch name {
	case "quick":
		return []Case{
			sp("iptables", "legacy", "file", 10000, 2, true, true),
			sp("ebpf", "", "file", 10000, 2, true, true),
			sp("iptables", "nft", "file", 1000, 2, true, true),
			sp("iptables", "legacy", "file", 1000, 3, false, true),
			sp("ebpf", "", "file", 1000, 3, false, true),
			kp("iptables", "nft", 1000, 2, true, true),
			kp("iptables", "legacy", 1000, 3, false, true),
			kp("nftables", "", 1000, 3, false, true),
			sp("iptables", "legacy", "api", 1000, 2, false, true),
			sp("ebpf", "", "api", 1000, 2, false, true),
			kp("nftables", "", 10000, 2, true, true),
			kp("iptables", "legacy", 10000, 2, true, true),
			sp("iptables", "legacy", "api", 10000, 2, true, true),
			sp("ebpf", "", "api", 10000, 2, true, true),
		}, nil
	case "full":
		return []Case{
			sp("iptables", "legacy", "file", 10000, 5, true, true),
			sp("ebpf", "", "file", 10000, 5, true, true),
			sp("iptables", "nft", "file", 1000, 5, true, true),
			sp("iptables", "legacy", "file", 1000, 5, false, true),
			sp("ebpf", "", "file", 1000, 5, false, true),
			sp("iptables", "legacy", "file", 50000, 3, true, true),
			sp("ebpf", "", "file", 50000, 3, true, true),
			kp("iptables", "nft", 1000, 3, true, true),
			kp("iptables", "legacy", 1000, 5, false, true),
			kp("nftables", "", 1000, 5, false, true),
			sp("iptables", "legacy", "api", 1000, 3, false, true),
			sp("ebpf", "", "api", 1000, 3, false, true),
			kp("nftables", "", 10000, 3, true, true),
			kp("iptables", "legacy", 10000, 3, true, true),
			sp("iptables", "legacy", "api", 10000, 3, true, true),
			sp("ebpf", "", "api", 10000, 3, true, true),
			kp("nftables", "", 50000, 1, true, true),
			kp("iptables", "legacy", 50000, 1, false, true),
			sp("iptables", "legacy", "api", 50000, 1, false, true),
			sp("ebpf", "", "api", 50000, 1, false, true),
		}, nil
	}
	return nil, fmt.Errorf("runner: unknown profile %q (quick or full)", name)
}

// Run is one benchmark run.
type Run struct {
	opts    Options
	log     *slog.Logger
	bpffs   string // a private bpffs mounted for the run ("" if /sys/fs/bpf is one)
	pinBase string
	cluster *clusterEnv
	tb      *tb
	seq     int
}

// Execute runs every case of the profile and returns their results. A failing case is
// recorded in its Result and the run goes on; only a failure to set the run up is returned.
func Execute(ctx context.Context, opts Options, cases []Case) (results []*Result, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(opts.WorkDir, 0o700); err != nil {
		return nil, err
	}
	r := &Run{opts: opts, log: opts.Logger}
	r.tb = newTB(r.log, filepath.Join(opts.WorkDir, "tb"))
	defer r.teardown()
	if err := r.setupBPFFS(); err != nil {
		return nil, err
	}
	for _, c := range cases {
		if ctx.Err() != nil {
			return results, ctx.Err()
		}
		res := &Result{Case: c}
		results = append(results, res)
		start := time.Now()
		r.log.Info("case start", "case", c.ID(), "reps", c.Reps)
		if err := r.runCase(ctx, res); err != nil {
			res.Errors = append(res.Errors, err.Error())
			r.log.Error("case failed", "case", c.ID(), "err", err)
		}
		res.Elapsed = time.Since(start)
		r.log.Info("case done", "case", c.ID(), "elapsed", res.Elapsed.Round(time.Second),
			"cold", res.ColdMetric, "wall", res.ColdWall, "change", res.ChangeWall)
	}
	return results, nil
}

// setupBPFFS picks where eBPF pins go: a unique directory under /sys/fs/bpf when that is a
// bpffs; otherwise a bpffs instance of the run's own, mounted in its work dir (never on
// /sys/fs/bpf, which the whole machine shares) and unmounted at the end.
func (r *Run) setupBPFFS() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && int64(st.Type) == unix.BPF_FS_MAGIC {
		r.pinBase = filepath.Join("/sys/fs/bpf", filepath.Base(r.opts.WorkDir))
		return nil
	}
	dir := filepath.Join(r.opts.WorkDir, "bpffs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("runner: mount a private bpffs at %s: %w", dir, err)
	}
	r.bpffs = dir
	r.pinBase = dir
	return nil
}

func (r *Run) teardown() {
	r.tb.Close() // the control plane and its namespaces
	if left, err := netns.SweepRun(context.Background(), netns.RunPrefix()); len(left) > 0 || err != nil {
		r.log.Warn("swept leftovers", "removed", left, "err", err)
	}
	if r.pinBase != "" && r.bpffs == "" {
		os.RemoveAll(r.pinBase)
	}
	if r.bpffs != "" {
		if err := unix.Unmount(r.bpffs, unix.MNT_DETACH); err != nil {
			r.log.Error("unmount the run's bpffs", "dir", r.bpffs, "err", err)
		}
	}
	if !r.opts.Keep {
		os.RemoveAll(r.opts.WorkDir)
	}
}

func (r *Run) runCase(ctx context.Context, res *Result) error {
	c := res.Case
	if c.Source == "api" {
		if err := r.ensureCluster(ctx); err != nil {
			return err
		}
		if err := r.cluster.ensureServices(ctx, c.Services); err != nil {
			return err
		}
	}
	var errs []error
	for rep := 0; rep < c.Reps; rep++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		last := rep == c.Reps-1
		took, err := r.runRep(ctx, res, rep, last)
		if err != nil {
			errs = append(errs, fmt.Errorf("rep %d: %w", rep+1, err))
			if errors.Is(err, context.Canceled) {
				break
			}
		}
		// A slow peer is measured once more at most: the figure is clear and the run must
		// stay short.
		if took > 90*time.Second && rep < c.Reps-2 {
			r.log.Info("slow case: skipping to the last repetition", "case", c.ID(), "took", took.Round(time.Second))
			rep = c.Reps - 2
		}
	}
	return errors.Join(errs...)
}

// spec is the case's workload with the sandbox's real pods as the probe and change services.
func spec(services int) workload.Spec {
	return workload.Spec{Services: services, Endpoints: 10, ProbeIPs: []addr{podA, podB}, ChangeIPs: []addr{podA}, NodeName: nodeName}
}
