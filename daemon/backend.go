package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/ebpf"
	"github.com/svcproxy/svcproxy/proxy/iptables"
	"github.com/svcproxy/svcproxy/proxy/routes"
)

// NewBackend creates the backend the config's mode asks for. For mode auto it is ebpf when the
// kernel supports it, else iptables; the reason is returned for logs and status. What the
// backend not chosen left behind (a switch of mode) is cleaned up.
func NewBackend(ctx context.Context, cfg *config.Config, log *slog.Logger) (proxy.Backend, string, error) {
	mode, why := cfg.Mode, "mode "+string(cfg.Mode)+" set in the config or on the command line"
	if mode == config.ModeAuto {
		if hasIPv6(cfg) {
			mode, why = config.ModeIPTables, "auto: the config is dual-stack and the eBPF data path is IPv4 only"
		} else if ok, reason := ebpf.Supported(); ok {
			mode, why = config.ModeEBPF, "auto: the kernel supports the eBPF data path ("+reason+")"
		} else {
			mode, why = config.ModeIPTables, "auto: eBPF data path unavailable: "+reason
		}
	}
	switch mode {
	case config.ModeEBPF:
		if hasIPv6(cfg) {
			log.Warn("mode ebpf programs IPv4 only: the IPv6 VIPs of this dual-stack config are not served (mode auto or iptables serves both)")
		}
		b, err := newEBPF(cfg, log)
		if err != nil {
			return nil, "", err
		}
		cleanupIPTables(ctx, cfg, log)
		flushNATConntrack(ctx, log)
		return b, why, nil
	default:
		b, err := iptables.New(ctx, iptables.Options{Backend: cfg.IPTablesBackend, Logger: log})
		if err != nil {
			return nil, "", fmt.Errorf("iptables backend: %w", err)
		}
		var backend proxy.Backend = b
		if hasIPv6(cfg) {
			// Dual stack: ip6tables programs the IPv6 VIPs and endpoints beside iptables.
			b6, err := iptables.New(ctx, iptables.Options{Backend: cfg.IPTablesBackend, IPFamily: iptables.IPv6, Logger: log})
			if err != nil {
				return nil, "", fmt.Errorf("iptables backend (IPv6): %w", err)
			}
			backend = proxy.Multi{b, b6}
			why += "; dual-stack: iptables and ip6tables"
		}
		enableBridgeNetfilter(log)
		if err := ebpf.CleanupPinned(ctx, cfg.EBPFPinPath); err != nil {
			log.Warn("removing what the ebpf backend left", "err", err)
		}
		return backend, why, nil
	}
}

// hasIPv6 reports whether the config names an IPv6 service or pod range (dual-stack).
func hasIPv6(cfg *config.Config) bool {
	for _, ps := range [][]netip.Prefix{cfg.ServiceCIDRs, cfg.ClusterCIDRs, cfg.PodCIDRs} {
		for _, p := range ps {
			if p.Addr().Is6() {
				return true
			}
		}
	}
	return false
}

func newEBPF(cfg *config.Config, log *slog.Logger) (proxy.Backend, error) {
	cgroup := cfg.EBPFCgroupPath
	if cgroup == "" {
		var err error
		if cgroup, err = ebpf.EnsureCgroupV2(); err != nil {
			return nil, fmt.Errorf("ebpf backend: cgroup v2: %w", err)
		}
	}
	if err := ebpf.EnsureBPFFS(cfg.EBPFPinPath); err != nil {
		return nil, fmt.Errorf("ebpf backend: %w", err)
	}
	ifaces := cfg.EBPFInterfaces
	if len(ifaces) == 0 {
		var addrs []netip.Addr
		for _, n := range cfg.Nodes {
			if n.Name == cfg.NodeName && n.Address.IsValid() {
				addrs = append(addrs, n.Address)
			}
		}
		found, err := ebpf.ExternalInterfaces(addrs...)
		if err != nil {
			log.Warn("no external interface found: NodePorts and external IPs are served to local clients only; set ebpf.interfaces", "err", err)
		}
		ifaces = found
	}
	// The pod bridge carries the replies of local backends to masqueraded outside clients.
	var podIfaces []string
	if cfg.Bridge != "" {
		podIfaces = []string{cfg.Bridge}
	}
	b, err := ebpf.New(ebpf.Options{CgroupPath: cgroup, Interfaces: ifaces, PodInterfaces: podIfaces, PinPath: cfg.EBPFPinPath, Logger: log,
		NodePortRange: ebpf.PortRange{Min: cfg.NodePortRange.Min, Max: cfg.NodePortRange.Max}})
	if err != nil {
		return nil, err
	}
	log.Info("ebpf backend", "cgroup", cgroup, "interfaces", ifaces, "podInterfaces", podIfaces, "pins", cfg.EBPFPinPath)
	return b, nil
}

// enableBridgeNetfilter makes bridged traffic pass iptables in this network namespace, so a
// pod's reply to another pod on the same bridge is un-NATed (as kube-proxy requires).
func enableBridgeNetfilter(log *slog.Logger) {
	const p = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		log.Warn("cannot enable bridge-nf-call-iptables (load br_netfilter): same-node pod-to-service replies may bypass NAT", "err", err)
	}
}

func cleanupIPTables(ctx context.Context, cfg *config.Config, log *slog.Logger) []error {
	var errs []error
	for _, fam := range []struct {
		base   string
		family iptables.Family
	}{{"iptables", iptables.IPv4}, {"ip6tables", iptables.IPv6}} {
		for _, flavour := range []string{"nft", "legacy"} {
			// Only a flavour that holds our chains is touched: driving the other one would
			// create its (empty) tables.
			out, err := exec.CommandContext(ctx, fam.base+"-"+flavour+"-save").Output()
			if err != nil || !strings.Contains(string(out), ":SVCPROXY-") {
				continue
			}
			b, err := iptables.New(ctx, iptables.Options{Backend: flavour, IPFamily: fam.family, Logger: log})
			if err != nil {
				continue // that flavour is not installed: nothing of ours can be there
			}
			if err := b.Cleanup(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s (%s): %w", fam.base, flavour, err))
			}
		}
	}
	return errs
}

// Cleanup removes everything every backend made (rules of both iptables flavours, pinned BPF
// programs, links and maps, host-gw routes). IPAM state is kept.
func Cleanup(ctx context.Context, opts Options) error {
	cfg, err := LoadSettings(opts)
	if err != nil {
		return err
	}
	errs := cleanupIPTables(ctx, cfg, opts.Logger)
	if err := ebpf.CleanupPinned(ctx, cfg.EBPFPinPath); err != nil {
		errs = append(errs, err)
	}
	if m, err := routes.New(); err != nil {
		errs = append(errs, err)
	} else {
		if err := m.Cleanup(ctx); err != nil {
			errs = append(errs, err)
		}
		m.Close()
	}
	if len(errs) > 0 {
		return fmt.Errorf("cleanup: %w", errors.Join(errs...))
	}
	opts.Logger.Info("cleanup done: rules, BPF programs and maps, and routes removed; IPAM state kept", "stateDir", cfg.StateDir)
	return nil
}
