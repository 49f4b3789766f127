package iptables

import (
	"bytes"
	"crypto/sha256"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// LargeStateEndpoints is the endpoint count above which endpoint rules carry no comment
// (kube-proxy's threshold).
const LargeStateEndpoints = 1000

// Family is the IP family one Backend (and one Planner) programs: iptables or ip6tables.
type Family int

// IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

func (f Family) has(a netip.Addr) bool {
	if f == IPv6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

// DefaultMasqMark is the mark bit svcproxy sets on packets to masquerade. kube-proxy uses
// 0x4000, so the two can run side by side.
const DefaultMasqMark uint32 = 0x8000

// Config holds what the rendering depends on besides the State.
type Config struct {
	// Family selects which addresses of the State are programmed; default IPv4.
	Family Family
	// MasqMark is the single mark bit that requests masquerading; default DefaultMasqMark.
	MasqMark uint32
	// NoRandomFully drops --random-fully from MASQUERADE (for iptables older than 1.6.2).
	NoRandomFully bool
	// ChunkRules > 0 splits the per-service nat chains into restore inputs of about this many
	// rules (Plan.NATChunks) when a plan writes more. iptables-nft-restore --noflush takes time
	// quadratic in the rules of one input; split inputs keep it linear, each service still
	// changing atomically and the dispatch chains last.
	ChunkRules int
}

func (c Config) withDefaults() Config {
	if c.Family == 0 {
		c.Family = IPv4
	}
	if c.MasqMark == 0 {
		c.MasqMark = DefaultMasqMark
	}
	return c
}

// Written is what a Planner knows about the rules it wrote: the per-service chains of each
// service (nat table) and chains found in the kernel that no service owns. A Plan returns the
// Written that holds once its restore input has been applied.
type Written struct {
	// natSum and filterSum identify the content of the dispatch and helper chains written.
	natSum, filterSum [32]byte
	services          map[model.ServiceKey][]string
	// orphans are SVCPROXY- chains present in the kernel (per table) that the next full sync
	// deletes unless it writes them.
	orphans map[string][]string
}

// WithKernelChains returns a copy of w (which may be nil) that also knows the given chains
// found in the kernel, per table ("nat", "filter"); only names starting with ChainPrefix are
// kept. A full sync deletes every known chain it does not write.
func (w *Written) WithKernelChains(tables map[string][]string) *Written {
	out := &Written{services: map[model.ServiceKey][]string{}, orphans: map[string][]string{}}
	if w != nil {
		for k, v := range w.services {
			out.services[k] = v
		}
		for t, v := range w.orphans {
			out.orphans[t] = append([]string(nil), v...)
		}
	}
	for t, names := range tables {
		for _, n := range names {
			if strings.HasPrefix(n, ChainPrefix) {
				out.orphans[t] = append(out.orphans[t], n)
			}
		}
	}
	return out
}

// Chains returns every chain recorded for the nat table, sorted (for tests and inspection).
func (w *Written) Chains() []string {
	if w == nil {
		return nil
	}
	var out []string
	for _, v := range w.services {
		out = append(out, v...)
	}
	sort.Strings(out)
	return out
}

// Plan is the result of planning one sync: the input of `iptables-restore --noflush` for each
// table, and what holds once both are applied.
type Plan struct {
	// NAT and Filter are complete iptables-restore inputs (from "*table" to "COMMIT"), or nil
	// when a partial plan has nothing to write to that table.
	NAT, Filter []byte
	// NATChunks, when not empty, are applied in order before NAT: the first holds the
	// helper chains service chains jump to (SVCPROXY-MARK-MASQ, SVCPROXY-MASQ-NONPOD), the
	// others the per-service chains, about Config.ChunkRules rules each (whole services per
	// chunk). NAT then holds the dispatch chains and the deletions.
	NATChunks [][]byte
	Full      bool
	// ServicesWritten counts the services whose chains were (re)written.
	ServicesWritten int
	// Rules counts the rules (-A lines) in both inputs.
	Rules int
	// Deleted lists the chains the plan deletes.
	Deleted []string
	// Written is the planner's record once the plan is applied; pass it to the next Plan.
	Written *Written
}

// Planner renders States into restore inputs. It is pure (it never touches the kernel); it
// caches chain-name hashes between plans, so it is not safe for concurrent use.
type Planner struct {
	cfg   Config
	names nameCache
	probs []string
	// hint holds the section sizes of the previous full and partial plan, so buffers are
	// allocated once.
	hint [2][7]int
}

// NewPlanner returns a Planner for cfg.
func NewPlanner(cfg Config) *Planner {
	return &Planner{cfg: cfg.withDefaults()}
}

// Render returns the iptables-restore inputs of a full sync of st for IPv4 with the default
// mark, with no previous state: what golden tests and benchmarks look at.
func Render(st *model.State) (nat, filter string) {
	p := NewPlanner(Config{}).Plan(nil, st, model.Changes{}, true)
	return string(p.NAT), string(p.Filter)
}

// probability returns the --probability value for picking the first of k remaining endpoints,
// formatted like kube-proxy ("%0.10f" of 1/k).
func (pl *Planner) probability(k int) string {
	for len(pl.probs) <= k {
		n := len(pl.probs)
		if n == 0 {
			pl.probs = append(pl.probs, "")
			continue
		}
		pl.probs = append(pl.probs, strconv.FormatFloat(1.0/float64(n), 'f', 10, 64))
	}
	return pl.probs[k]
}

// writer accumulates restore text without fmt.
type writer struct{ b []byte }

func (w *writer) s(x string)        { w.b = append(w.b, x...) }
func (w *writer) u(x uint64)        { w.b = strconv.AppendUint(w.b, x, 10) }
func (w *writer) addr(a netip.Addr) { w.b = a.AppendTo(w.b) }
func (w *writer) hex(x uint32) {
	w.b = append(w.b, "0x"...)
	w.b = strconv.AppendUint(w.b, uint64(x), 16)
}

// portPlan is everything the dispatch rules and the chains of one service port need.
type portPlan struct {
	svc   *model.Service
	port  *model.ServicePort
	id    string
	label string
	proto string // "tcp", "udp", "sctp"
	cat   model.Categorized
	hash  string
	names *portNames

	clusterIPs, externalIPs, lbIPs []netip.Addr
	sourceRanges                   []netip.Prefix
	nodePort                       uint16
	external                       bool // reachable from outside in this family

	hasEndpoints bool // any usable endpoint (else REJECT)
	hasInternal  bool // endpoints for the internal policy (else DROP)
	hasExternal  bool // endpoints for the external policy (else DROP)
	usesCluster  bool // the S chain is written and used
	usesLocal    bool // the L chain is written and used
}

func (pp *portPlan) chain(kind string) string { return kind + pp.hash }

func (pp *portPlan) internalChain() string {
	if pp.svc.InternalTrafficPolicyLocal {
		return pp.chain(kindLocal)
	}
	return pp.chain(kindCluster)
}

func (pp *portPlan) externalTarget() string {
	if len(pp.sourceRanges) > 0 && len(pp.lbIPs) > 0 {
		return pp.chain(kindFirewall)
	}
	return pp.chain(kindExternal)
}

// familyPort returns p, or a copy of p holding only the endpoints of family f when it has
// endpoints of both families.
func familyPort(f Family, p *model.ServicePort) *model.ServicePort {
	mixed := false
	for _, e := range p.Endpoints {
		if !f.has(e.IP) {
			mixed = true
			break
		}
	}
	if !mixed {
		return p
	}
	q := *p
	q.Endpoints = nil
	for _, e := range p.Endpoints {
		if f.has(e.IP) {
			q.Endpoints = append(q.Endpoints, e)
		}
	}
	return &q
}

func lowerProto(p model.Protocol) string {
	switch p {
	case model.UDP:
		return "udp"
	case model.SCTP:
		return "sctp"
	default:
		return "tcp"
	}
}

func (pl *Planner) planPort(st *model.State, s *model.Service, p *model.ServicePort) portPlan {
	f := pl.cfg.Family
	pp := portPlan{svc: s, port: p, proto: lowerProto(p.Protocol)}
	pp.id = portID(s, p)
	pp.names = pl.names.port(pp.id)
	pp.hash = pp.names.hash
	pp.cat = model.CategorizeEndpoints(s, familyPort(f, p), st.NodeName, st.Zone)
	for _, a := range s.ClusterIPs {
		if f.has(a) {
			pp.clusterIPs = append(pp.clusterIPs, a)
		}
	}
	for _, a := range s.ExternalIPs {
		if f.has(a) {
			pp.externalIPs = append(pp.externalIPs, a)
		}
	}
	if s.Type == model.LoadBalancer || len(s.LoadBalancerIPs) > 0 {
		for _, a := range s.LoadBalancerIPs {
			if f.has(a) {
				pp.lbIPs = append(pp.lbIPs, a)
			}
		}
	}
	for _, r := range s.LoadBalancerSourceRanges {
		if f.has(r.Addr()) {
			pp.sourceRanges = append(pp.sourceRanges, r.Masked())
		}
	}
	if s.Type == model.NodePort || s.Type == model.LoadBalancer {
		pp.nodePort = p.NodePort
	}
	pp.external = len(pp.externalIPs) > 0 || len(pp.lbIPs) > 0 || pp.nodePort != 0
	// Cluster is never empty when Local is not (see model.CategorizeEndpoints).
	pp.hasEndpoints = len(pp.cat.Cluster) > 0
	pp.hasInternal = pp.hasEndpoints
	if s.InternalTrafficPolicyLocal {
		pp.hasInternal = len(pp.cat.Local) > 0
	}
	pp.hasExternal = pp.hasEndpoints
	if s.ExternalTrafficPolicyLocal {
		pp.hasExternal = len(pp.cat.Local) > 0
	}
	pp.usesCluster = pp.hasEndpoints && (!s.InternalTrafficPolicyLocal || pp.external)
	pp.usesLocal = pp.cat.UsesLocal && len(pp.cat.Local) > 0
	pp.label = portLabel(s, p)
	return pp
}

// tableText collects one table's restore input in sections: fixed chain declarations,
// per-service chain declarations, declarations of chains to delete, deletions, dispatch
// rules, per-service chain rules.
type tableText struct {
	decl, svcDecl, delDecl, del, rules, chains writer
	nrules, nchain, ndispatch                  int
}

func (t *tableText) declare(chain string) { declareIn(&t.decl, chain) }

func (t *tableText) svcDeclare(chain string) { declareIn(&t.svcDecl, chain) }

func (t *tableText) delete(chain string) {
	declareIn(&t.delDecl, chain)
	t.del.s("-X ")
	t.del.s(chain)
	t.del.s("\n")
}

func declareIn(w *writer, chain string) {
	w.s(":")
	w.s(chain)
	w.s(" - [0:0]\n")
}

func (t *tableText) rule(chain string) *writer {
	t.nrules++
	t.ndispatch++
	t.rules.s("-A ")
	t.rules.s(chain)
	return &t.rules
}

// chainRule starts a rule of a per-service chain; those follow the dispatch rules.
func (t *tableText) chainRule(chain string) *writer {
	t.nrules++
	t.nchain++
	t.chains.s("-A ")
	t.chains.s(chain)
	return &t.chains
}

func assemble(table string, parts ...[]byte) []byte {
	n := len(table) + 16
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, '*')
	out = append(out, table...)
	out = append(out, '\n')
	for _, p := range parts {
		out = append(out, p...)
	}
	return append(out, "COMMIT\n"...)
}

func (t *tableText) bytes(table string) []byte {
	return assemble(table, t.decl.b, t.svcDecl.b, t.delDecl.b, t.del.b, t.rules.b, t.chains.b)
}

// cut moves the per-service chains written so far into a restore input of their own.
func (t *tableText) cut(table string) []byte {
	out := assemble(table, t.svcDecl.b, t.chains.b)
	t.svcDecl.b, t.chains.b, t.nchain = t.svcDecl.b[:0], t.chains.b[:0], 0
	return out
}

// Plan renders what to write to make the kernel match st. prev is what the previous plan
// recorded (nil: nothing known); changes says which services differ from the state of the
// previous plan. A full plan (full, prev nil or changes.Settings) rewrites every chain and
// deletes every chain known in prev that it does not write; a partial plan rewrites the
// dispatch chains and only the chains of the changed services, and deletes chains of removed
// services. st must be sorted (model.State.Sort).
func (pl *Planner) Plan(prev *Written, st *model.State, changes model.Changes, full bool) *Plan {
	full = full || prev == nil || changes.Settings
	c := pl.cfg
	var nat, filter tableText
	pl.presize(st, full, &nat, &filter)
	hostMask := "/32"
	if c.Family == IPv6 {
		hostMask = "/128"
	}

	// Fixed chains, rewritten every sync. helpers holds those that service chains jump to:
	// when the plan is split into chunks they go first.
	var helpers tableText
	for _, ch := range []string{ChainServices, ChainNodePorts, ChainPostrouting} {
		nat.declare(ch)
	}
	helpers.declare(ChainMarkMasq)
	for _, ch := range []string{ChainServices, ChainExternalServices, ChainNodePorts, ChainForward, ChainFirewall} {
		filter.declare(ch)
	}
	if full {
		nat.declare(ChainCanary)
		filter.declare(ChainCanary)
	}

	var clusterCIDRs []netip.Prefix
	for _, p := range st.ClusterCIDRs {
		if c.Family.has(p.Addr()) {
			clusterCIDRs = append(clusterCIDRs, p.Masked())
		}
	}
	if !st.MasqueradeAll && len(clusterCIDRs) > 1 {
		helpers.declare(ChainMasqNonPod)
		for _, p := range clusterCIDRs {
			w := helpers.rule(ChainMasqNonPod)
			w.s(" -s ")
			w.s(p.String())
			w.s(" -j RETURN\n")
		}
		w := helpers.rule(ChainMasqNonPod)
		w.s(" -j " + ChainMarkMasq + "\n")
	}

	mark := string(strconv.AppendUint([]byte("0x"), uint64(c.MasqMark), 16))
	w := helpers.rule(ChainMarkMasq)
	w.s(" -j MARK --or-mark " + mark + "\n")
	w = nat.rule(ChainPostrouting)
	w.s(" -m mark ! --mark " + mark + "/" + mark + " -j RETURN\n")
	w = nat.rule(ChainPostrouting)
	w.s(" -j MARK --xor-mark " + mark + "\n")
	w = nat.rule(ChainPostrouting)
	w.s(" -m comment --comment \"svcproxy service traffic requiring SNAT\" -j MASQUERADE")
	if !c.NoRandomFully {
		w.s(" --random-fully")
	}
	w.s("\n")

	w = filter.rule(ChainForward)
	w.s(" -m conntrack --ctstate INVALID -j DROP\n")
	w = filter.rule(ChainForward)
	w.s(" -m mark --mark " + mark + "/" + mark + " -j ACCEPT\n")
	w = filter.rule(ChainForward)
	w.s(" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")

	rejectICMP := "icmp-port-unreachable"
	if c.Family == IPv6 {
		rejectICMP = "icmp6-port-unreachable"
	}
	blockTarget := func(pp *portPlan, haveEndpoints bool) string {
		if haveEndpoints {
			return " -m comment --comment \"" + pp.label + " has no local endpoints\" -j DROP\n"
		}
		if pp.proto == "tcp" {
			return " -m comment --comment \"" + pp.label + " has no endpoints\" -j REJECT --reject-with tcp-reset\n"
		}
		return " -m comment --comment \"" + pp.label + " has no endpoints\" -j REJECT --reject-with " + rejectICMP + "\n"
	}
	match := func(w *writer, pp *portPlan, dst netip.Addr, port uint16) {
		if dst.IsValid() {
			w.s(" -d ")
			w.addr(dst)
			w.s(hostMask)
		}
		w.s(" -p ")
		w.s(pp.proto)
		w.s(" -m ")
		w.s(pp.proto)
		w.s(" --dport ")
		w.u(uint64(port))
	}
	// dispatchRule writes the SVCPROXY-SERVICES rule that sends pp's traffic to ip (what names
	// the kind of address in the comment) to chain target.
	dispatchRule := func(nat *tableText, pp *portPlan, ip netip.Addr, what, target string) {
		w := nat.rule(ChainServices)
		w.s(" -m comment --comment \"")
		w.s(pp.label)
		w.s(" ")
		w.s(what)
		w.s("\"")
		match(w, pp, ip, pp.port.Port)
		w.s(" -j ")
		w.s(target)
		w.s("\n")
	}

	next := &Written{services: make(map[model.ServiceKey][]string, len(st.Services)), orphans: map[string][]string{}}
	plan := &Plan{Full: full}
	var pps []portPlan
	// Like kube-proxy, a large state drops the per-endpoint comments: they would be a third of
	// the restore input.
	large := st.EndpointCount() > LargeStateEndpoints
	var nodePortRules writer
	nodePortCount := 0

	for _, s := range st.Services {
		_, changed := changes.Services[s.Key]
		rewrite := full || changed
		if rewrite {
			plan.ServicesWritten++
		}
		var chains []string
		reuse := false
		if !rewrite && prev != nil {
			chains, reuse = prev.services[s.Key]
		}
		pps = pps[:0]
		for i := range s.Ports {
			pps = append(pps, pl.planPort(st, s, &s.Ports[i]))
		}
		for i := range pps {
			pp := &pps[i]
			// nat dispatch.
			for _, ip := range pp.clusterIPs {
				if pp.hasInternal {
					dispatchRule(&nat, pp, ip, "cluster IP", pp.internalChain())
				} else {
					w := filter.rule(ChainServices)
					match(w, pp, ip, pp.port.Port)
					w.s(blockTarget(pp, pp.hasEndpoints))
				}
			}
			for _, ip := range pp.externalIPs {
				if pp.hasEndpoints {
					dispatchRule(&nat, pp, ip, "external IP", pp.chain(kindExternal))
				}
				if !pp.hasExternal {
					w := filter.rule(ChainExternalServices)
					match(w, pp, ip, pp.port.Port)
					w.s(blockTarget(pp, pp.hasEndpoints))
				}
			}
			for _, ip := range pp.lbIPs {
				if pp.hasEndpoints {
					dispatchRule(&nat, pp, ip, "loadbalancer IP", pp.externalTarget())
				}
				if !pp.hasExternal {
					w := filter.rule(ChainExternalServices)
					match(w, pp, ip, pp.port.Port)
					w.s(blockTarget(pp, pp.hasEndpoints))
				}
				if len(pp.sourceRanges) > 0 {
					w := filter.rule(ChainFirewall)
					match(w, pp, ip, pp.port.Port)
					w.s(" -m comment --comment \"")
					w.s(pp.label)
					w.s(" traffic not accepted by ")
					w.s(pp.chain(kindFirewall))
					w.s("\" -j DROP\n")
				}
			}
			if pp.nodePort != 0 {
				if pp.hasEndpoints {
					nodePortCount++
					nodePortRules.s("-A " + ChainNodePorts + " -m comment --comment \"")
					nodePortRules.s(pp.label)
					nodePortRules.s(" node port\"")
					match(&nodePortRules, pp, netip.Addr{}, pp.nodePort)
					nodePortRules.s(" -j ")
					nodePortRules.s(pp.chain(kindExternal))
					nodePortRules.s("\n")
				}
				if !pp.hasExternal {
					w := filter.rule(ChainExternalServices)
					w.s(" -m addrtype --dst-type LOCAL")
					match(w, pp, netip.Addr{}, pp.nodePort)
					w.s(blockTarget(pp, pp.hasEndpoints))
				}
			}
			if s.HealthCheckNodePort != 0 && s.Type == model.LoadBalancer && s.ExternalTrafficPolicyLocal && i == 0 {
				w := filter.rule(ChainNodePorts)
				w.s(" -m comment --comment \"")
				w.s(s.Key.String())
				w.s(" health check node port\" -p tcp -m tcp --dport ")
				w.u(uint64(s.HealthCheckNodePort))
				w.s(" -j ACCEPT\n")
			}

			// Per-service chains.
			if !pp.hasEndpoints || reuse {
				continue
			}
			chains = pl.serviceChains(pp, chains, rewrite, &nat, st.MasqueradeAll, clusterCIDRs, hostMask, large)
		}
		next.services[s.Key] = chains
		if c.ChunkRules > 0 && nat.nchain >= c.ChunkRules {
			plan.NATChunks = append(plan.NATChunks, nat.cut("nat"))
		}
	}

	// Node ports are matched last, on local addresses only (all of them, or those within
	// NodePortAddresses), never on loopback.
	nat.rules.b = append(nat.rules.b, nodePortRules.b...)
	nat.nrules += nodePortCount
	nat.ndispatch += nodePortCount
	var npAddrs []netip.Prefix
	for _, p := range st.NodePortAddresses {
		if c.Family.has(p.Addr()) {
			npAddrs = append(npAddrs, p.Masked())
		}
	}
	if len(st.NodePortAddresses) == 0 {
		w := nat.rule(ChainServices)
		if c.Family == IPv6 {
			w.s(" ! -d ::1/128")
		} else {
			w.s(" ! -d 127.0.0.0/8")
		}
		w.s(" -m comment --comment \"svcproxy service nodeports; must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j " + ChainNodePorts + "\n")
	}
	for _, p := range npAddrs {
		w := nat.rule(ChainServices)
		w.s(" -d ")
		w.s(p.String())
		w.s(" -m comment --comment \"svcproxy service nodeports; must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j " + ChainNodePorts + "\n")
	}

	// Deletions: chains of changed or removed services that are no longer written, and on a
	// full sync every other known chain.
	var del []string
	if prev != nil {
		written := map[string]struct{}{}
		for _, s := range st.Services {
			if _, changed := changes.Services[s.Key]; full || changed {
				for _, ch := range next.services[s.Key] {
					written[ch] = struct{}{}
				}
			}
		}
		for k, chs := range prev.services {
			_, changed := changes.Services[k]
			if !full && !changed {
				continue
			}
			for _, ch := range chs {
				if _, ok := written[ch]; !ok {
					del = append(del, ch)
				}
			}
		}
		if full {
			fixed := map[string]bool{ChainServices: true, ChainNodePorts: true, ChainPostrouting: true, ChainMarkMasq: true,
				ChainCanary: true, ChainExternalServices: true, ChainForward: true, ChainFirewall: true}
			if !st.MasqueradeAll && len(clusterCIDRs) > 1 {
				fixed[ChainMasqNonPod] = true
			}
			for _, ch := range prev.orphans["nat"] {
				if _, ok := written[ch]; !ok && !fixed[ch] {
					del = append(del, ch)
				}
			}
			for _, ch := range prev.orphans["filter"] {
				if !fixed[ch] {
					filter.delete(ch)
					plan.Deleted = append(plan.Deleted, ch)
				}
			}
		} else {
			// A partial plan keeps orphans for the next full one.
			for t, v := range prev.orphans {
				next.orphans[t] = v
			}
		}
	}
	if !st.MasqueradeAll && len(clusterCIDRs) > 1 {
		// Optional fixed chain: remembered so a later full plan deletes it when unneeded.
		next.orphans["nat"] = append(next.orphans["nat"], ChainMasqNonPod)
	}
	sort.Strings(del)
	for i, ch := range del {
		if i > 0 && del[i-1] == ch {
			continue
		}
		// Flush (declare) before delete: a chain must be empty and unreferenced to go.
		nat.delete(ch)
		plan.Deleted = append(plan.Deleted, ch)
	}

	pl.remember(full, &nat, &filter)
	if full {
		pl.names.sweep()
	}
	// The dispatch and helper chains are identified by a digest of their rules. A partial plan
	// leaves them out when they are what the previous plan wrote: then an endpoint change
	// writes only the chains of its service.
	sum := sha256.New()
	sum.Write(helpers.decl.b)
	sum.Write(helpers.rules.b)
	sum.Write([]byte{0})
	sum.Write(nat.rules.b)
	copy(next.natSum[:], sum.Sum(nil))
	next.filterSum = sha256.Sum256(filter.rules.b)
	natSame := !full && prev.natSum == next.natSum
	filterSame := !full && prev.filterSum == next.filterSum && len(filter.del.b) == 0
	if natSame {
		nat.decl.b, nat.rules.b = nil, nil
		helpers.decl.b, helpers.rules.b = nil, nil
		nat.nrules -= nat.ndispatch
		helpers.nrules = 0
	}
	if len(plan.NATChunks) > 0 {
		if nat.nchain > 0 {
			plan.NATChunks = append(plan.NATChunks, nat.cut("nat"))
		}
		if !natSame {
			plan.NATChunks = append([][]byte{assemble("nat", helpers.decl.b, helpers.rules.b)}, plan.NATChunks...)
		}
		plan.NAT = assemble("nat", nat.decl.b, nat.delDecl.b, nat.del.b, nat.rules.b)
	} else {
		plan.NAT = assemble("nat", nat.decl.b, helpers.decl.b, nat.svcDecl.b, nat.delDecl.b, nat.del.b,
			helpers.rules.b, nat.rules.b, nat.chains.b)
	}
	if filterSame {
		filter.nrules = 0
	} else {
		plan.Filter = filter.bytes("filter")
	}
	if bytes.Equal(plan.NAT, []byte("*nat\nCOMMIT\n")) {
		plan.NAT = nil
	}
	plan.Rules = nat.nrules + helpers.nrules + filter.nrules
	plan.Written = next
	return plan
}

func (pl *Planner) presize(st *model.State, full bool, nat, filter *tableText) {
	h := pl.hint[0]
	if !full {
		h = pl.hint[1]
	}
	if h == ([7]int{}) {
		ports, eps := 0, 0
		for _, s := range st.Services {
			ports += len(s.Ports)
			for i := range s.Ports {
				eps += len(s.Ports[i].Endpoints)
			}
		}
		h = [7]int{1024, ports*80 + eps*40 + 512, 512, ports*160 + 1024, ports*600 + eps*330, 512, ports*40 + 1024}
		if !full {
			h[1], h[4] = 0, 0
		}
	}
	if c := pl.cfg.ChunkRules; c > 0 {
		// Chunked plans reuse the per-service buffers for each chunk.
		h[1], h[4] = min(h[1], c*40+4096), min(h[4], c*120+4096)
	}
	nat.decl.b = make([]byte, 0, h[0])
	nat.svcDecl.b = make([]byte, 0, h[1])
	nat.del.b = make([]byte, 0, h[2])
	nat.rules.b = make([]byte, 0, h[3])
	nat.chains.b = make([]byte, 0, h[4])
	filter.decl.b = make([]byte, 0, h[5])
	filter.rules.b = make([]byte, 0, h[6])
}

func (pl *Planner) remember(full bool, nat, filter *tableText) {
	grow := func(n int) int { return n + n/8 + 256 }
	h := [7]int{grow(len(nat.decl.b)), grow(len(nat.svcDecl.b)), grow(len(nat.del.b)), grow(len(nat.rules.b)),
		grow(len(nat.chains.b)), grow(len(filter.decl.b)), grow(len(filter.rules.b))}
	if full {
		pl.hint[0] = h
	} else {
		pl.hint[1] = h
	}
}

// serviceChains records the chains of one port with endpoints in chains and, when rewrite is
// set, writes them.
func (pl *Planner) serviceChains(pp *portPlan, chains []string, rewrite bool, nat *tableText,
	masqAll bool, clusterCIDRs []netip.Prefix, hostMask string, large bool) []string {
	sChain, lChain, xChain, fChain := pp.chain(kindCluster), pp.chain(kindLocal), pp.chain(kindExternal), pp.chain(kindFirewall)

	// Endpoint chains: the union of the cluster and local endpoints.
	type epc struct {
		ep    model.Endpoint
		chain string
	}
	eps := make([]epc, 0, len(pp.cat.Cluster)+len(pp.cat.Local))
	var clusterNames, localNames []string
	if pp.usesCluster {
		clusterNames = make([]string, len(pp.cat.Cluster))
		for i, e := range pp.cat.Cluster {
			clusterNames[i] = pl.names.endpoint(pp.names, pp.id, e.AddrPort())
			eps = append(eps, epc{e, clusterNames[i]})
		}
	}
	if pp.usesLocal {
		localNames = make([]string, len(pp.cat.Local))
		var inCluster map[string]bool
		if pp.usesCluster {
			inCluster = make(map[string]bool, len(clusterNames))
			for _, n := range clusterNames {
				inCluster[n] = true
			}
		}
		for i, e := range pp.cat.Local {
			localNames[i] = pl.names.endpoint(pp.names, pp.id, e.AddrPort())
			if !inCluster[localNames[i]] {
				eps = append(eps, epc{e, localNames[i]})
			}
		}
	}
	if pp.usesCluster {
		chains = append(chains, sChain)
	}
	if pp.usesLocal {
		chains = append(chains, lChain)
	}
	if pp.external {
		chains = append(chains, xChain)
		if len(pp.sourceRanges) > 0 && len(pp.lbIPs) > 0 {
			chains = append(chains, fChain)
		}
	}
	for _, e := range eps {
		chains = append(chains, e.chain)
	}
	if !rewrite {
		return chains
	}

	affinity := 0
	if pp.svc.AffinityTimeout > 0 {
		affinity = int(pp.svc.AffinityTimeout.Seconds())
		if affinity < 1 {
			affinity = 1
		}
	}
	balance := func(chain string, list []model.Endpoint, names []string) {
		if affinity > 0 {
			for i := range list {
				w := nat.chainRule(chain)
				w.s(" -m recent --name ")
				w.s(names[i])
				w.s(" --rcheck --seconds ")
				w.u(uint64(affinity))
				w.s(" --reap -j ")
				w.s(names[i])
				w.s("\n")
			}
		}
		n := len(list)
		for i, e := range list {
			w := nat.chainRule(chain)
			if !large {
				w.s(" -m comment --comment \"")
				w.s(pp.label)
				w.s(" -> ")
				w.b = e.AddrPort().AppendTo(w.b)
				w.s("\"")
			}
			if i < n-1 {
				w.s(" -m statistic --mode random --probability ")
				w.s(pl.probability(n - i))
			}
			w.s(" -j ")
			w.s(names[i])
			w.s("\n")
		}
	}

	if pp.usesCluster {
		nat.svcDeclare(sChain)
		for _, ip := range pp.clusterIPs {
			switch {
			case masqAll:
				w := nat.chainRule(sChain)
				w.s(" -d ")
				w.addr(ip)
				w.s(hostMask)
				w.s(" -p " + pp.proto + " -m " + pp.proto + " --dport ")
				w.u(uint64(pp.port.Port))
				w.s(" -j " + ChainMarkMasq + "\n")
			case len(clusterCIDRs) == 1:
				w := nat.chainRule(sChain)
				w.s(" ! -s ")
				w.s(clusterCIDRs[0].String())
				w.s(" -d ")
				w.addr(ip)
				w.s(hostMask)
				w.s(" -p " + pp.proto + " -m " + pp.proto + " --dport ")
				w.u(uint64(pp.port.Port))
				w.s(" -j " + ChainMarkMasq + "\n")
			case len(clusterCIDRs) > 1:
				w := nat.chainRule(sChain)
				w.s(" -d ")
				w.addr(ip)
				w.s(hostMask)
				w.s(" -p " + pp.proto + " -m " + pp.proto + " --dport ")
				w.u(uint64(pp.port.Port))
				w.s(" -j " + ChainMasqNonPod + "\n")
			}
		}
		balance(sChain, pp.cat.Cluster, clusterNames)
	}
	if pp.usesLocal {
		nat.svcDeclare(lChain)
		balance(lChain, pp.cat.Local, localNames)
	}
	if pp.external {
		nat.svcDeclare(xChain)
		if pp.svc.ExternalTrafficPolicyLocal {
			for _, p := range clusterCIDRs {
				w := nat.chainRule(xChain)
				w.s(" -s ")
				w.s(p.String())
				w.s(" -m comment --comment \"pod traffic for ")
				w.s(pp.label)
				w.s(" external destinations\" -j ")
				w.s(sChain)
				w.s("\n")
			}
			w := nat.chainRule(xChain)
			w.s(" -m comment --comment \"masquerade LOCAL traffic for ")
			w.s(pp.label)
			w.s(" external destinations\" -m addrtype --src-type LOCAL -j " + ChainMarkMasq + "\n")
			w = nat.chainRule(xChain)
			w.s(" -m comment --comment \"route LOCAL traffic for ")
			w.s(pp.label)
			w.s(" external destinations\" -m addrtype --src-type LOCAL -j ")
			w.s(sChain)
			w.s("\n")
			if pp.usesLocal {
				w = nat.chainRule(xChain)
				w.s(" -j ")
				w.s(lChain)
				w.s("\n")
			}
		} else {
			w := nat.chainRule(xChain)
			w.s(" -m comment --comment \"masquerade traffic for ")
			w.s(pp.label)
			w.s(" external destinations\" -j " + ChainMarkMasq + "\n")
			w = nat.chainRule(xChain)
			w.s(" -j ")
			w.s(sChain)
			w.s("\n")
		}
		if len(pp.sourceRanges) > 0 && len(pp.lbIPs) > 0 {
			nat.svcDeclare(fChain)
			for _, r := range pp.sourceRanges {
				w := nat.chainRule(fChain)
				w.s(" -s ")
				w.s(r.String())
				w.s(" -m comment --comment \"")
				w.s(pp.label)
				w.s(" loadbalancer IP\" -j ")
				w.s(xChain)
				w.s("\n")
			}
		}
	}
	for _, e := range eps {
		nat.svcDeclare(e.chain)
		w := nat.chainRule(e.chain)
		w.s(" -s ")
		w.addr(e.ep.IP)
		w.s(hostMask)
		w.s(" -j " + ChainMarkMasq + "\n")
		w = nat.chainRule(e.chain)
		w.s(" -p ")
		w.s(pp.proto)
		if affinity > 0 {
			w.s(" -m recent --set --name ")
			w.s(e.chain)
		}
		w.s(" -j DNAT --to-destination ")
		w.b = e.ep.AddrPort().AppendTo(w.b)
		w.s("\n")
	}
	return chains
}
