package ebpf

import (
	"net/netip"
	"sort"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Scopes of a frontend, as in bpf/include/svc_maps.h.
const (
	// ScopeExt is looked up by the tc programs: clients outside the node.
	ScopeExt uint8 = 0
	// ScopeInt is looked up by the socket hooks: clients on the node (pods and host).
	ScopeInt uint8 = 1
)

// Flags of a frontend (slot 0) and of a backend, as in bpf/include/svc_maps.h.
const (
	flagAffinity uint8 = 0x01
	flagLocal    uint8 = 0x02
	flagSNAT     uint8 = 0x04
	flagRanges   uint8 = 0x08
	flagNodeAddr uint8 = 0x10
	beFlagLocal  uint8 = 0x01
)

const (
	protoTCP uint8 = 6
	protoUDP uint8 = 17
)

// FrontendKey is one address, port and protocol a service answers on, in one scope.
type FrontendKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
	Scope uint8
}

// BackendKey is one endpoint address and port for one protocol.
type BackendKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

// Frontend is what the planner wants behind one FrontendKey. New flows pick among Active;
// Terminating endpoints stay listed (after the active ones) so that flows already using them
// keep finding their backend until it is gone.
type Frontend struct {
	Key         FrontendKey
	Active      []BackendKey
	Terminating []BackendKey
	// Local marks a Local traffic policy for this scope (the tc path keeps the client address).
	Local bool
	// AffinitySeconds > 0 means sessionAffinity ClientIP with that timeout.
	AffinitySeconds uint32
	// Masquerade makes the tc path SNAT every flow, not only those from outside
	// clusterCIDR or to remote backends: external destinations under policy Cluster, and
	// everything but Local with masqueradeAll.
	Masquerade bool
	// NodeAddress marks a frontend on one of the node's own addresses (NodePorts, and
	// externalIPs or load-balancer IPs assigned to the node): without a usable backend the tc
	// path leaves its packets to the stack, which refuses them (TCP RST, ICMP port
	// unreachable), as kube-proxy's REJECT does.
	NodeAddress bool
	// SourceRanges, when non-nil, are the only client prefixes the tc path accepts
	// (loadBalancerSourceRanges on load-balancer IPs).
	SourceRanges []netip.Prefix
}

// PlanService returns the frontends of service s on the node of st, whose IPv4 addresses are
// nodeAddrs (used for NodePorts, after the NodePortAddresses filter). It is pure. Endpoint
// semantics (ready vs terminating, traffic policies, topology) come from
// model.CategorizeEndpoints only. IPv6 addresses and SCTP ports are not handled by this
// backend and are left out. The second result holds the local flag of every backend used.
func PlanService(st *model.State, s *model.Service, nodeAddrs []netip.Addr) ([]Frontend, map[BackendKey]bool) {
	var out []Frontend
	local := map[BackendKey]bool{}
	var affinity uint32
	if s.AffinityTimeout > 0 {
		affinity = uint32(s.AffinityTimeout.Seconds())
		if affinity == 0 {
			affinity = 1
		}
	}
	npAddrs := nodePortAddrs(st, nodeAddrs)
	for i := range s.Ports {
		p := &s.Ports[i]
		proto, ok := protoNumber(p.Protocol)
		if !ok {
			continue
		}
		cat := model.CategorizeEndpoints(s, p, st.NodeName, st.Zone)
		toKeys := func(eps []model.Endpoint) []BackendKey {
			var ks []BackendKey
			for _, e := range eps {
				if !e.IP.Is4() {
					continue
				}
				k := BackendKey{Addr: e.IP, Port: e.Port, Proto: proto}
				ks = append(ks, k)
			}
			return ks
		}
		for _, e := range p.Endpoints {
			if e.IP.Is4() {
				local[BackendKey{Addr: e.IP, Port: e.Port, Proto: proto}] = e.NodeName == st.NodeName
			}
		}
		cluster := toKeys(cat.Cluster)
		internal := cluster
		if s.InternalTrafficPolicyLocal {
			internal = toKeys(cat.Local)
		}
		external, extLocal := cluster, false
		// Local without any usable endpoint in the cluster is refused like any service
		// without endpoints; with endpoints on other nodes only, it drops (as kube-proxy).
		if s.ExternalTrafficPolicyLocal && cat.UsesLocal && len(cluster) > 0 {
			external, extLocal = toKeys(cat.Local), true
		}
		// Endpoints that still serve but are not chosen for new flows: kept for old flows.
		var serving []BackendKey
		for _, e := range p.Endpoints {
			if e.Ready || e.Serving {
				serving = append(serving, toKeys([]model.Endpoint{e})...)
			}
		}
		add := func(addr netip.Addr, port uint16, scope uint8, active []BackendKey, isLocal bool) *Frontend {
			if !addr.Is4() || port == 0 {
				return nil
			}
			out = append(out, Frontend{
				Key:             FrontendKey{Addr: addr, Port: port, Proto: proto, Scope: scope},
				Active:          active,
				Terminating:     minus(serving, active),
				Local:           isLocal,
				AffinitySeconds: affinity,
				// External destinations (NodePorts, externalIPs, load-balancer IPs) under
				// policy Cluster are masqueraded whatever the source, like kube-proxy's
				// KUBE-EXT chains (ClusterIPs are set apart below).
				Masquerade:  scope == ScopeExt && !isLocal,
				NodeAddress: scope == ScopeExt && isNodeAddr(nodeAddrs, addr),
			})
			return &out[len(out)-1]
		}
		for _, ip := range s.ClusterIPs {
			add(ip, p.Port, ScopeInt, internal, s.InternalTrafficPolicyLocal)
			// Outside clients whose router sends the service range to this node reach
			// ClusterIPs too, as with kube-proxy: through the endpoints internalTrafficPolicy
			// picks, masqueraded when they come from outside clusterCIDR (the tc program
			// checks the source) unless masqueradeAll.
			if fe := add(ip, p.Port, ScopeExt, internal, false); fe != nil {
				fe.Masquerade = st.MasqueradeAll
			}
		}
		// Clients on the node reach external addresses through the cluster-wide endpoints, as
		// kube-proxy short-circuits pod and host traffic to them; outside clients follow
		// externalTrafficPolicy.
		for _, ip := range s.ExternalIPs {
			add(ip, p.Port, ScopeInt, cluster, false)
			add(ip, p.Port, ScopeExt, external, extLocal)
		}
		for _, ip := range s.LoadBalancerIPs {
			add(ip, p.Port, ScopeInt, cluster, false)
			if fe := add(ip, p.Port, ScopeExt, external, extLocal); fe != nil && len(s.LoadBalancerSourceRanges) > 0 {
				fe.SourceRanges = []netip.Prefix{}
				for _, r := range s.LoadBalancerSourceRanges {
					if r.Addr().Is4() {
						fe.SourceRanges = append(fe.SourceRanges, r.Masked())
					}
				}
			}
		}
		if p.NodePort != 0 {
			for _, ip := range npAddrs {
				add(ip, p.NodePort, ScopeInt, cluster, false)
				if !ip.IsLoopback() { // outside clients never reach a loopback address
					add(ip, p.NodePort, ScopeExt, external, extLocal)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return lessFrontend(out[i].Key, out[j].Key) })
	return out, local
}

func isNodeAddr(addrs []netip.Addr, a netip.Addr) bool {
	for _, n := range addrs {
		if n == a {
			return true
		}
	}
	return false
}

// nodePortAddrs filters the node's addresses by st.NodePortAddresses (empty: all of them,
// loopback included, like kube-proxy's iptables mode accepting localhost NodePorts; on the
// socket path this needs no route_localnet).
func nodePortAddrs(st *model.State, addrs []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if !a.Is4() {
			continue
		}
		if len(st.NodePortAddresses) == 0 {
			out = append(out, a)
			continue
		}
		for _, p := range st.NodePortAddresses {
			if p.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	return out
}

func protoNumber(p model.Protocol) (uint8, bool) {
	switch p {
	case model.TCP:
		return protoTCP, true
	case model.UDP:
		return protoUDP, true
	}
	return 0, false
}

func minus(all, drop []BackendKey) []BackendKey {
	var out []BackendKey
	for _, k := range all {
		found := false
		for _, d := range drop {
			if d == k {
				found = true
				break
			}
		}
		if !found {
			out = append(out, k)
		}
	}
	return out
}

func lessFrontend(a, b FrontendKey) bool {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c < 0
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	if a.Proto != b.Proto {
		return a.Proto < b.Proto
	}
	return a.Scope < b.Scope
}
