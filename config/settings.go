package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// settings validates the ProxyConfig settings and fills p.cfg (with defaults when the file has
// no ProxyConfig).
func (p *parser) settings() {
	c := p.cfg
	c.Mode = DefaultMode
	c.NodePortRange = DefaultNodePortRange
	c.Bridge = DefaultBridge
	c.MetricsBindAddress = netip.MustParseAddrPort(DefaultMetricsBindAddress)
	c.HealthzBindAddress = netip.MustParseAddrPort(DefaultHealthzBindAddress)
	c.StateDir = DefaultStateDir
	c.APISocket = DefaultAPISocket
	c.MinSyncPeriod = DefaultMinSyncPeriod
	c.SyncPeriod = DefaultSyncPeriod
	c.IPTablesBackend = DefaultIPTablesBackend
	c.EBPFPinPath = DefaultEBPFPinPath
	c.PodCooldown = DefaultPodCooldown
	c.ServiceGracePeriod = DefaultServiceGracePeriod
	c.PodGCGracePeriod = DefaultPodGCGracePeriod
	c.healthChecks = map[model.ServiceKey]HealthCheck{}
	if p.raw == nil {
		return
	}
	c.HasProxyConfig = true
	d, r := p.proxyDoc, p.raw
	if r.NodeName != "" {
		checkName(d, "nodeName", r.NodeName, false, dns1123Subdomain)
		c.NodeName = r.NodeName
	}
	c.Zone = r.Zone
	switch Mode(r.Mode) {
	case "":
	case ModeAuto, ModeIPTables, ModeEBPF:
		c.Mode = Mode(r.Mode)
	default:
		d.addf("mode", "must be auto, iptables or ebpf, not %q", r.Mode)
	}
	c.ClusterCIDRs = cidrList(d, "clusterCIDR", r.ClusterCIDR, "clusterCIDRs", r.ClusterCIDRs)
	c.ServiceCIDRs = cidrList(d, "serviceCIDR", r.ServiceCIDR, "serviceCIDRs", r.ServiceCIDRs)
	c.PodCIDRs = cidrList(d, "podCIDR", r.PodCIDR, "podCIDRs", r.PodCIDRs)
	podPath := "podCIDR"
	if len(r.PodCIDRs) > 0 {
		podPath = "podCIDRs"
	}
	for i, pc := range c.PodCIDRs {
		path := podPath
		if podPath == "podCIDRs" {
			path = index(podPath, i)
		}
		checkInside(d, path, pc, c.ClusterCIDRs, "clusterCIDR")
	}
	for i, sc := range c.ServiceCIDRs {
		path := "serviceCIDR"
		if len(r.ServiceCIDRs) > 0 {
			path = index("serviceCIDRs", i)
		}
		for _, cc := range c.ClusterCIDRs {
			if sc.Overlaps(cc) {
				d.addf(path, "%s overlaps clusterCIDR %s", sc, cc)
			}
		}
		if sc.Addr().Is4() && sc.Bits() > 30 || sc.Addr().Is6() && sc.Bits() > 126 {
			d.addf(path, "%s is too small to hold VIPs", sc)
		}
	}
	if r.NodePortRange != "" {
		if pr, err := parsePortRange(r.NodePortRange); err != nil {
			d.addf("nodePortRange", "%v", err)
		} else {
			c.NodePortRange = pr
		}
	}
	for i, s := range r.NodePortAddresses {
		if pf, ok := parseCIDR(d, index("nodePortAddresses", i), s); ok {
			c.NodePortAddresses = append(c.NodePortAddresses, pf)
		}
	}
	if r.Bridge != "" {
		if err := checkIfName(r.Bridge); err != nil {
			d.addf("bridge", "%v", err)
		}
		c.Bridge = r.Bridge
	}
	c.MasqueradeAll = r.MasqueradeAll
	if r.MetricsBindAddress != "" {
		c.MetricsBindAddress = parseBind(d, "metricsBindAddress", r.MetricsBindAddress)
	}
	if r.HealthzBindAddress != "" {
		c.HealthzBindAddress = parseBind(d, "healthzBindAddress", r.HealthzBindAddress)
	}
	if r.StateDir != "" {
		checkAbs(d, "stateDir", r.StateDir)
		c.StateDir = filepath.Clean(r.StateDir)
	}
	if r.APISocket != "" {
		checkAbs(d, "apiSocket", r.APISocket)
		if len(r.APISocket) > 107 {
			d.addf("apiSocket", "path is %d bytes long; a unix socket path holds at most 107", len(r.APISocket))
		}
		c.APISocket = filepath.Clean(r.APISocket)
	}
	if r.MinSyncPeriod != "" {
		c.MinSyncPeriod = parseDuration(d, "minSyncPeriod", r.MinSyncPeriod, true)
	}
	if r.SyncPeriod != "" {
		c.SyncPeriod = parseDuration(d, "syncPeriod", r.SyncPeriod, false)
	}
	if c.SyncPeriod > 0 && c.MinSyncPeriod > c.SyncPeriod {
		d.addf("minSyncPeriod", "%v is longer than syncPeriod %v", c.MinSyncPeriod, c.SyncPeriod)
	}
	if r.IPTables != nil && r.IPTables.Backend != "" {
		switch r.IPTables.Backend {
		case "auto", "nft", "legacy":
			c.IPTablesBackend = r.IPTables.Backend
		default:
			d.addf("iptables.backend", "must be auto, nft or legacy, not %q", r.IPTables.Backend)
		}
	}
	if i := r.IPAM; i != nil {
		if i.PodCooldown != "" {
			c.PodCooldown = parseDuration(d, "ipam.podCooldown", i.PodCooldown, true)
		}
		if i.ServiceGracePeriod != "" {
			c.ServiceGracePeriod = parseDuration(d, "ipam.serviceGracePeriod", i.ServiceGracePeriod, true)
		}
		if i.PodGCGracePeriod != "" {
			c.PodGCGracePeriod = parseDuration(d, "ipam.podGCGracePeriod", i.PodGCGracePeriod, true)
		}
	}
	if e := r.EBPF; e != nil {
		if e.CgroupPath != "" {
			if !filepath.IsAbs(e.CgroupPath) {
				d.addf("ebpf.cgroupPath", "must be an absolute path, not %q", e.CgroupPath)
			}
			c.EBPFCgroupPath = filepath.Clean(e.CgroupPath)
		}
		if e.PinPath != "" {
			if !filepath.IsAbs(e.PinPath) {
				d.addf("ebpf.pinPath", "must be an absolute path, not %q", e.PinPath)
			}
			c.EBPFPinPath = filepath.Clean(e.PinPath)
		}
		seen := map[string]bool{}
		for i, name := range e.Interfaces {
			path := index("ebpf.interfaces", i)
			switch {
			case name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t"):
				d.addf(path, "%q is not a valid interface name", name)
			case seen[name]:
				d.addf(path, "interface %q is listed twice", name)
			}
			seen[name] = true
		}
		c.EBPFInterfaces = e.Interfaces
	}
	p.nodes()
}

// nodes validates the `nodes` list.
func (p *parser) nodes() {
	d, r, c := p.proxyDoc, p.raw, p.cfg
	names := map[string]int{}
	addrs := map[netip.Addr]int{}
	type owned struct {
		pf   netip.Prefix
		path string
	}
	var ranges []owned
	for i, pc := range c.PodCIDRs {
		path := "podCIDR"
		if len(r.PodCIDRs) > 0 {
			path = index("podCIDRs", i)
		}
		ranges = append(ranges, owned{pc, path})
	}
	for i, rn := range r.Nodes {
		path := index("nodes", i)
		n := model.Node{Name: rn.Name, Zone: rn.Zone}
		checkName(d, join(path, "name"), rn.Name, true, dns1123Subdomain)
		if first, dup := names[rn.Name]; dup && rn.Name != "" {
			d.addf(join(path, "name"), "duplicate node %q (first at line %d)", rn.Name, d.line(index("nodes", first)))
		}
		names[rn.Name] = i
		if rn.Address == "" {
			d.addf(join(path, "address"), "required: the node's underlay IP address")
		} else if a, ok := parseIP(d, join(path, "address"), rn.Address); ok {
			if first, dup := addrs[a]; dup {
				d.addf(join(path, "address"), "address %s is also the address of nodes[%d]", a, first)
			}
			addrs[a] = i
			n.Address = a
		}
		n.PodCIDRs = cidrList(d, join(path, "podCIDR"), rn.PodCIDR, join(path, "podCIDRs"), rn.PodCIDRs)
		if len(n.PodCIDRs) == 0 {
			d.addf(path, "podCIDR is required: the pod range routed to this node")
		}
		isSelf := rn.Name != "" && rn.Name == c.NodeName
		for j, pc := range n.PodCIDRs {
			pp := join(path, "podCIDR")
			if len(rn.PodCIDRs) > 0 {
				pp = index(join(path, "podCIDRs"), j)
			}
			checkInside(d, pp, pc, c.ClusterCIDRs, "clusterCIDR")
			if isSelf && len(c.PodCIDRs) > 0 {
				if j >= len(c.PodCIDRs) || c.PodCIDRs[j] != pc {
					d.addf(pp, "node %s is this node (nodeName) but its podCIDR %s differs from the top-level podCIDR", rn.Name, pc)
				}
				continue
			}
			for _, o := range ranges {
				if o.pf.Overlaps(pc) {
					d.addf(pp, "%s overlaps %s (%s at line %d)", pc, o.pf, o.path, d.line(o.path))
				}
			}
			ranges = append(ranges, owned{pc, pp})
		}
		c.Nodes = append(c.Nodes, n)
	}
}

// cidrList reads the singular and plural spelling of a CIDR setting (at most one per family).
func cidrList(d *doc, singlePath, single, pluralPath string, plural []string) []netip.Prefix {
	var out []netip.Prefix
	if len(plural) > 0 {
		for i, s := range plural {
			if pf, ok := parseCIDR(d, index(pluralPath, i), s); ok {
				out = append(out, pf)
			}
		}
		if single != "" {
			if pf, err := netip.ParsePrefix(single); err != nil || len(out) == 0 || pf != out[0] {
				d.addf(singlePath, "%s differs from %s[0]: set one of them", single, pluralPath)
			}
		}
		if len(plural) > 2 || len(out) == 2 && out[0].Addr().Is4() == out[1].Addr().Is4() {
			d.addf(pluralPath, "at most two ranges, one IPv4 and one IPv6")
		}
		return out
	}
	if single == "" {
		return nil
	}
	if pf, ok := parseCIDR(d, singlePath, single); ok {
		out = append(out, pf)
	}
	return out
}

func parseCIDR(d *doc, path, s string) (netip.Prefix, bool) {
	pf, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		d.addf(path, "invalid CIDR %q", s)
		return netip.Prefix{}, false
	}
	if pf.Addr().Zone() != "" {
		d.addf(path, "invalid CIDR %q: zones are not allowed", s)
		return netip.Prefix{}, false
	}
	if pf.Masked() != pf {
		d.addf(path, "%s has host bits set (did you mean %s?)", s, pf.Masked())
		return netip.Prefix{}, false
	}
	return pf, true
}

func parseIP(d *doc, path, s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		d.addf(path, "invalid IP address %q", s)
		return netip.Addr{}, false
	}
	if a.Is4In6() {
		d.addf(path, "%s is an IPv4-mapped IPv6 address; write it as IPv4", s)
		return netip.Addr{}, false
	}
	return a, true
}

// checkEndpointIP rejects addresses that can never be a backend, as Kubernetes does.
func checkEndpointIP(d *doc, path string, a netip.Addr) {
	switch {
	case a.IsUnspecified():
		d.addf(path, "%s is the unspecified address", a)
	case a.IsLoopback():
		d.addf(path, "%s is a loopback address", a)
	case a.IsLinkLocalUnicast():
		d.addf(path, "%s is a link-local address", a)
	case a.IsMulticast():
		d.addf(path, "%s is a multicast address", a)
	}
}

// checkInside reports pf when none of outer (when any is given) contains it.
func checkInside(d *doc, path string, pf netip.Prefix, outer []netip.Prefix, what string) {
	if len(outer) == 0 {
		return
	}
	var names []string
	for _, o := range outer {
		if o.Addr().Is4() == pf.Addr().Is4() && o.Bits() <= pf.Bits() && o.Contains(pf.Addr()) {
			return
		}
		names = append(names, o.String())
	}
	d.addf(path, "%s is outside %s %s", pf, what, strings.Join(names, ", "))
}

func parsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || !ok {
		return PortRange{}, fmt.Errorf("%q is not a port range like 30000-32767", s)
	}
	if a > b {
		return PortRange{}, fmt.Errorf("%q: the first port is above the last", s)
	}
	return PortRange{Min: uint16(a), Max: uint16(b)}, nil
}

func parseBind(d *doc, path, s string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		d.addf(path, "%q is not IP:port (e.g. 127.0.0.1:10249 or [::1]:10249)", s)
		return netip.AddrPort{}
	}
	return ap
}

func parseDuration(d *doc, path, s string, zeroOK bool) time.Duration {
	v, err := time.ParseDuration(s)
	if err != nil {
		d.addf(path, "%q is not a duration (e.g. 1s, 500ms, 2m)", s)
		return 0
	}
	if v < 0 || v == 0 && !zeroOK {
		d.addf(path, "must be positive, not %v", v)
		return 0
	}
	return v
}

func checkAbs(d *doc, path, s string) {
	if !filepath.IsAbs(s) {
		d.addf(path, "%q must be an absolute path", s)
	}
}

// checkIfName checks a Linux interface name.
func checkIfName(s string) error {
	if len(s) > 15 {
		return fmt.Errorf("%q is longer than 15 bytes, the limit of an interface name", s)
	}
	if s == "." || s == ".." || strings.ContainsAny(s, "/: \t\n") {
		return fmt.Errorf("%q is not a valid interface name", s)
	}
	return nil
}
