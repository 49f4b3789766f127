package iptables

import (
	"net/netip"
	"sort"
	"strconv"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// ConntrackFlush selects conntrack entries to delete: UDP ones, or TCP ones in TCPState when
// that is set. Zero fields match anything.
type ConntrackFlush struct {
	// TCPState, when set, selects TCP entries in that state (SYN_SENT: connection attempts
	// that never got an answer) instead of UDP entries.
	TCPState string
	// OrigDst and OrigDstPort match the original destination (a VIP, or any address for a
	// node port when OrigDst is invalid).
	OrigDst     netip.Addr
	OrigDstPort uint16
	// ReplySrc / ReplySrcPort match the endpoint the entry was translated to.
	ReplySrc     netip.Addr
	ReplySrcPort uint16
}

// Args returns the arguments of `conntrack -D` for f in family fam.
func (f ConntrackFlush) Args(fam Family) []string {
	a := []string{"-D", "-p", "udp"}
	if f.TCPState != "" {
		a = []string{"-D", "-p", "tcp", "--state", f.TCPState}
	}
	if fam == IPv6 {
		a = append(a, "-f", "ipv6")
	}
	if f.OrigDst.IsValid() {
		a = append(a, "--orig-dst", f.OrigDst.String())
	}
	if f.OrigDstPort != 0 {
		a = append(a, "--orig-port-dst", strconv.Itoa(int(f.OrigDstPort)))
	}
	if f.ReplySrc.IsValid() {
		a = append(a, "--reply-src", f.ReplySrc.String())
	}
	if f.ReplySrcPort != 0 {
		a = append(a, "--reply-port-src", strconv.Itoa(int(f.ReplySrcPort)))
	}
	return a
}

type udpDest struct {
	vips     []netip.Addr
	port     uint16
	nodePort uint16
	eps      map[netip.AddrPort]bool
}

// protoDests returns, per service port of protocol proto, its frontends and programmed
// endpoints.
func protoDests(st *model.State, fam Family, only map[model.ServiceKey]struct{}, proto model.Protocol) map[string]*udpDest {
	out := map[string]*udpDest{}
	if st == nil {
		return out
	}
	add := func(s *model.Service) {
		for i := range s.Ports {
			p := &s.Ports[i]
			if p.Protocol != proto {
				continue
			}
			d := &udpDest{port: p.Port, eps: map[netip.AddrPort]bool{}}
			for _, lists := range [][]netip.Addr{s.ClusterIPs, s.ExternalIPs, s.LoadBalancerIPs} {
				for _, a := range lists {
					if fam.has(a) {
						d.vips = append(d.vips, a)
					}
				}
			}
			if s.Type == model.NodePort || s.Type == model.LoadBalancer {
				d.nodePort = p.NodePort
			}
			c := model.CategorizeEndpoints(s, familyPort(fam, p), st.NodeName, st.Zone)
			for _, l := range [][]model.Endpoint{c.Cluster, c.Local} {
				for _, e := range l {
					if fam.has(e.IP) {
						d.eps[e.AddrPort()] = true
					}
				}
			}
			out[portID(s, p)] = d
		}
	}
	if only == nil {
		for _, s := range st.Services {
			add(s)
		}
		return out
	}
	for k := range only {
		if s := st.Service(k); s != nil {
			add(s)
		}
	}
	return out
}

// StaleConntrack returns the conntrack entries to delete after moving from prev to next (prev
// nil: none). UDP entries translated to an endpoint that is no longer programmed go, and
// entries of a VIP or node port that just got its first endpoint go too (they were created
// while the port had none and would blackhole the flow). Of TCP, only connection attempts to
// a removed endpoint that never got an answer (SYN_SENT) go: a new connection from the same
// client port would otherwise be taken for a retransmission and sent to the dead endpoint
// again for as long as the entry lives (2 minutes; found on the real-node bench after a
// node's pods died with it); established TCP connections are never flushed. When changed is
// non-nil only those services are compared.
func StaleConntrack(prev, next *model.State, fam Family, changed map[model.ServiceKey]struct{}) []ConntrackFlush {
	if prev == nil {
		return nil
	}
	var out []ConntrackFlush
	removed := func(proto model.Protocol, tcpState string) {
		before := protoDests(prev, fam, changed, proto)
		after := protoDests(next, fam, changed, proto)
		for id, b := range before {
			a := after[id]
			for ep := range b.eps {
				if a != nil && a.eps[ep] {
					continue
				}
				for _, v := range b.vips {
					out = append(out, ConntrackFlush{TCPState: tcpState, OrigDst: v, OrigDstPort: b.port, ReplySrc: ep.Addr(), ReplySrcPort: ep.Port()})
				}
				if b.nodePort != 0 {
					out = append(out, ConntrackFlush{TCPState: tcpState, OrigDstPort: b.nodePort, ReplySrc: ep.Addr(), ReplySrcPort: ep.Port()})
				}
			}
		}
	}
	removed(model.TCP, "SYN_SENT")
	removed(model.UDP, "")
	before := protoDests(prev, fam, changed, model.UDP)
	after := protoDests(next, fam, changed, model.UDP)
	for id, a := range after {
		if len(a.eps) == 0 {
			continue
		}
		if b := before[id]; b != nil && len(b.eps) > 0 {
			continue
		}
		for _, v := range a.vips {
			out = append(out, ConntrackFlush{OrigDst: v, OrigDstPort: a.port})
		}
		if a.nodePort != 0 {
			out = append(out, ConntrackFlush{OrigDstPort: a.nodePort})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		x, y := out[i], out[j]
		if x.TCPState != y.TCPState {
			return x.TCPState < y.TCPState
		}
		if c := x.OrigDst.Compare(y.OrigDst); c != 0 {
			return c < 0
		}
		if x.OrigDstPort != y.OrigDstPort {
			return x.OrigDstPort < y.OrigDstPort
		}
		if c := x.ReplySrc.Compare(y.ReplySrc); c != 0 {
			return c < 0
		}
		return x.ReplySrcPort < y.ReplySrcPort
	})
	return out
}
