package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	ciliumebpf "github.com/cilium/ebpf"

	"github.com/svcproxy/svcproxy/bench/workload"
	"github.com/svcproxy/svcproxy/proxy/ebpf"
	"github.com/svcproxy/svcproxy/test/netns"
)

// startSvcproxy writes the case's config and starts `svcproxy run` in the node namespace.
func (r *Run) startSvcproxy(ctx context.Context, sb *netns.Sandbox, c Case, dir string) (*daemon, error) {
	sdir := filepath.Join(dir, "svcproxy")
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return nil, err
	}
	pin := filepath.Join(r.pinBase, filepath.Base(sb.ID))
	set := workload.Settings{
		NodeName: nodeName, Mode: c.Mode, IPTablesBackend: c.Flavour, PodCIDR: netns.PodPrefix.String(),
		MetricsBindAddress: metricsAddr, HealthzBindAddress: healthzAddr,
		StateDir: filepath.Join(sdir, "state"), APISocket: filepath.Join(sdir, "svcproxy.sock"),
		CgroupPath: sb.Cgroup, PinPath: pin, Bridge: netns.BridgeName,
	}
	cfgPath := filepath.Join(sdir, "config.yaml")
	sp := spec(c.Services)
	write := func(s workload.Spec) error {
		if c.Source == "api" {
			s = workload.Spec{Services: 2, Endpoints: 1} // settings only; the state comes from the API
		}
		data, err := s.ProxyConfig(set)
		if err != nil {
			return err
		}
		if c.Source == "api" {
			data = []byte(data[:strings.Index(string(data), "services:\n")])
		}
		tmp := cfgPath + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return err
		}
		return os.Rename(tmp, cfgPath)
	}
	if err := write(sp); err != nil {
		return nil, err
	}
	argv := []string{r.opts.Svcproxy, "run", "--config", cfgPath, "--node-name", nodeName, "--mode", c.Mode,
		"--state-dir", set.StateDir, "--api-socket", set.APISocket}
	if c.Source == "api" {
		kc, err := r.cluster.kubeconfig()
		if err != nil {
			return nil, err
		}
		if err := r.cluster.attach(ctx, sb); err != nil {
			return nil, err
		}
		argv = append(argv, "--kubeconfig", kc)
	}
	launcher := netns.IPNetnsExec
	if c.Mode == "ebpf" {
		// Only the network namespace changes: the daemon must see the run's bpffs and cgroup2.
		launcher = netns.Nsenter
	}
	startProc := func(ctx context.Context) (*netns.Process, error) {
		return sb.Start(ctx, netns.ProcSpec{Name: "svcproxy", NS: sb.Node, Argv: argv, Launcher: launcher})
	}
	proc, err := startProc(ctx)
	if err != nil {
		return nil, err
	}
	d := &daemon{proc: proc, metricName: "svcproxy_", readyz: true, http: newNSHTTP(sb.Node.Name), start: startProc}
	if c.Source == "file" {
		d.applyChange = func(ctx context.Context, ip netip.Addr) (time.Time, error) {
			data, err := sp.WithChange(ip).ProxyConfig(set)
			if err != nil {
				return time.Time{}, err
			}
			tmp := cfgPath + ".tmp"
			if err := os.WriteFile(tmp, data, 0o600); err != nil {
				return time.Time{}, err
			}
			t0 := time.Now() // the file changes with the rename
			return t0, os.Rename(tmp, cfgPath)
		}
	} else {
		d.applyChange = r.cluster.changeEndpoint
	}
	d.cleanup = func(ctx context.Context) {
		d.proc.Stop(ctx, 10*time.Second)
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		args := []string{"netns", "exec", sb.Node.Name, r.opts.Svcproxy, "cleanup", "--config", cfgPath, "--state-dir", set.StateDir, "--api-socket", set.APISocket, "--node-name", nodeName}
		if c.Mode == "ebpf" {
			args = append([]string{"--net=" + sb.Node.Path(), "--"}, args[3:]...)
			if out, err := exec.CommandContext(cctx, "nsenter", args...).CombinedOutput(); err != nil {
				r.log.Warn("svcproxy cleanup", "err", err, "out", string(out))
			}
		} else if out, err := exec.CommandContext(cctx, "ip", args...).CombinedOutput(); err != nil {
			r.log.Warn("svcproxy cleanup", "err", err, "out", string(out))
		}
		// Whatever svcproxy cleanup left of the pins is the run's own directory.
		if err := ebpf.CleanupPinned(cctx, pin); err != nil {
			r.log.Warn("unpin", "dir", pin, "err", err)
		}
	}
	return d, nil
}

// startKubeProxy starts upstream kube-proxy in the node namespace, against the test cluster.
func (r *Run) startKubeProxy(ctx context.Context, sb *netns.Sandbox, c Case, dir string) (*daemon, error) {
	kc, err := r.cluster.kubeconfig()
	if err != nil {
		return nil, err
	}
	if err := r.cluster.attach(ctx, sb); err != nil {
		return nil, err
	}
	mode := c.Mode
	argv := []string{filepath.Join(r.opts.KubeBinDir, "kube-proxy"),
		"--kubeconfig", kc, "--hostname-override", nodeName, "--cluster-cidr", workload.ClusterCIDR,
		"--proxy-mode", mode, "--metrics-bind-address", metricsAddr, "--healthz-bind-address", healthzAddr,
		// Conntrack sysctls and the nf_conntrack hash size are machine-wide: leave them alone.
		"--conntrack-max-per-core", "0", "--conntrack-min", "0",
		"--conntrack-tcp-timeout-established", "0", "--conntrack-tcp-timeout-close-wait", "0",
		"--oom-score-adj", "0", "--v", "1"}
	var env []string
	if c.Mode == "iptables" {
		// kube-proxy runs iptables, iptables-save and iptables-restore from PATH: point them at
		// the flavour of the case.
		bin := filepath.Join(dir, "iptables-"+c.Flavour)
		if err := os.MkdirAll(bin, 0o700); err != nil {
			return nil, err
		}
		for _, t := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			target, err := exec.LookPath(strings.Replace(t, "tables", "tables-"+c.Flavour, 1))
			if err != nil {
				return nil, fmt.Errorf("kube-proxy %s flavour: %w", c.Flavour, err)
			}
			if err := os.Symlink(target, filepath.Join(bin, t)); err != nil {
				return nil, err
			}
		}
		env = append(env, "PATH="+bin+":"+os.Getenv("PATH"))
	}
	startProc := func(ctx context.Context) (*netns.Process, error) {
		return sb.Start(ctx, netns.ProcSpec{Name: "kube-proxy", NS: sb.Node, Argv: argv, Env: env})
	}
	proc, err := startProc(ctx)
	if err != nil {
		return nil, err
	}
	return &daemon{proc: proc, metricName: "kubeproxy_", http: newNSHTTP(sb.Node.Name), applyChange: r.cluster.changeEndpoint, start: startProc}, nil
}

// countRules counts what the case wrote into the kernel of the node namespace.
func (r *Run) countRules(ctx context.Context, sb *netns.Sandbox, c Case) (n, lines float64, what string, err error) {
	run := func(args ...string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(cctx, "ip", append([]string{"netns", "exec", sb.Node.Name}, args...)...).Output()
		return string(out), err
	}
	switch {
	case c.Mode == "iptables":
		out, err := run("iptables-" + c.Flavour + "-save")
		if err != nil {
			return 0, 0, "", err
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A ") {
				n++
			}
		}
		return n, float64(strings.Count(out, "\n")), "iptables rules (`-A` lines of iptables-save)", nil
	case c.Mode == "nftables":
		out, err := run("nft", "-j", "list", "ruleset")
		if err != nil {
			return 0, 0, "", err
		}
		var doc struct {
			Nftables []map[string]json.RawMessage `json:"nftables"`
		}
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			return 0, 0, "", err
		}
		for _, o := range doc.Nftables {
			if _, ok := o["rule"]; ok {
				n++
			}
			for _, k := range []string{"map", "set"} {
				if raw, ok := o[k]; ok {
					var m struct {
						Elem []json.RawMessage `json:"elem"`
					}
					json.Unmarshal(raw, &m)
					n += float64(len(m.Elem))
				}
			}
		}
		text, err := run("nft", "list", "ruleset")
		if err != nil {
			return 0, 0, "", err
		}
		return n, float64(strings.Count(text, "\n")), "nftables rules + set/map elements", nil
	default: // ebpf
		pin := filepath.Join(r.pinBase, filepath.Base(sb.ID))
		for _, name := range []string{"svc_services", "svc_backends", "svc_revnat"} {
			k, err := mapEntries(filepath.Join(pin, name))
			if err != nil {
				return 0, 0, "", err
			}
			n += k
		}
		return n, 0, "BPF map entries (svc_services + svc_backends + svc_revnat)", nil
	}
}

func mapEntries(path string) (float64, error) {
	m, err := ciliumebpf.LoadPinnedMap(path, &ciliumebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	defer m.Close()
	key := make([]byte, m.KeySize())
	val := make([]byte, m.ValueSize())
	it := m.Iterate()
	n := 0
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate %s: %w", path, err)
	}
	return float64(n), nil
}
