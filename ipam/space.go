package ipam

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"strconv"
	"strings"
)

// ord is an item of an allocation space (an IPv4 or IPv6 address, or a port) as an unsigned
// 128-bit number, so that one scanner serves every kind.
type ord struct{ hi, lo uint64 }

func (a ord) cmp(b ord) int {
	switch {
	case a.hi < b.hi:
		return -1
	case a.hi > b.hi:
		return 1
	case a.lo < b.lo:
		return -1
	case a.lo > b.lo:
		return 1
	}
	return 0
}

func (a ord) add(n uint64) ord {
	lo, carry := bits.Add64(a.lo, n, 0)
	return ord{a.hi + carry, lo}
}

func (a ord) next() ord { return a.add(1) }

func (a ord) prev() ord {
	lo, borrow := bits.Sub64(a.lo, 1, 0)
	return ord{a.hi - borrow, lo}
}

// count returns b-a+1 (the number of items in [a, b]), saturated at MaxUint64.
func count(a, b ord) uint64 {
	lo, borrow := bits.Sub64(b.lo, a.lo, 0)
	hi := b.hi - a.hi - borrow
	if hi != 0 || lo == math.MaxUint64 {
		return math.MaxUint64
	}
	return lo + 1
}

func ordOfAddr(a netip.Addr) ord {
	if a.Is4() {
		b := a.As4()
		return ord{0, uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return ord{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func addrOfOrd(o ord, v6 bool) netip.Addr {
	if !v6 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(o.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], o.hi)
	binary.BigEndian.PutUint64(b[8:], o.lo)
	return netip.AddrFrom16(b)
}

// encode renders o as a big-endian key of width bytes (2, 4 or 16), so that bbolt's byte order
// is numeric order.
func encode(o ord, width int) []byte {
	switch width {
	case 2:
		return binary.BigEndian.AppendUint16(nil, uint16(o.lo))
	case 4:
		return binary.BigEndian.AppendUint32(nil, uint32(o.lo))
	}
	b := binary.BigEndian.AppendUint64(nil, o.hi)
	return binary.BigEndian.AppendUint64(b, o.lo)
}

func decode(b []byte) ord {
	switch len(b) {
	case 2:
		return ord{0, uint64(binary.BigEndian.Uint16(b))}
	case 4:
		return ord{0, uint64(binary.BigEndian.Uint32(b))}
	case 16:
		return ord{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	}
	return ord{math.MaxUint64, math.MaxUint64}
}

// Kind says what an allocation space hands out.
type Kind string

// Kinds of allocation spaces.
const (
	KindPod      Kind = "pod"
	KindService  Kind = "service"
	KindNodePort Kind = "nodePort"
)

// space is one range that allocations are made from: a pod CIDR, a service CIDR or the node
// port range. Several spaces of one kind and family share one pool (bucket), so that two
// overlapping ranges (a CIDR changed between restarts) can never hand one item out twice.
type space struct {
	kind  Kind
	pool  string // bucket name
	id    string // the range as written, e.g. "10.244.1.0/24" or "30000-32767"
	width int    // key width in bytes
	v6    bool
	first ord // first usable item
	last  ord // last usable item
	// split is the first item of the upper band, which dynamic allocation tries first; the
	// lower band [first, split) is kept for explicit requests while the upper one has room.
	// split == first when the range has no lower band.
	split ord
	// gateway is the pod range's gateway (the bridge's address); invalid for other kinds.
	gateway netip.Addr
	prefix  netip.Prefix
}

func (s *space) contains(o ord) bool { return s.first.cmp(o) <= 0 && o.cmp(s.last) <= 0 }

func (s *space) size() uint64 { return count(s.first, s.last) }

func (s *space) String() string {
	switch s.kind {
	case KindPod:
		return "pod range " + s.id
	case KindService:
		return "service range " + s.id
	}
	return "node port range " + s.id
}

// format renders an item of s for people.
func (s *space) format(o ord) string {
	if s.kind == KindNodePort {
		return strconv.FormatUint(o.lo, 10)
	}
	return addrOfOrd(o, s.v6).String()
}

func poolName(k Kind, v6 bool) string {
	switch k {
	case KindNodePort:
		return "nodeport"
	case KindPod:
		if v6 {
			return "pod6"
		}
		return "pod4"
	}
	if v6 {
		return "svc6"
	}
	return "svc4"
}

// lastAddr returns the last address of p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) ord {
	o := ordOfAddr(p.Masked().Addr())
	hostBits := p.Addr().BitLen() - p.Bits()
	switch {
	case hostBits == 0:
		return o
	case hostBits >= 64:
		// A shift by 64 yields 0 in Go, so hostBits == 128 sets every bit of hi too.
		return ord{o.hi | (uint64(1)<<(hostBits-64) - 1), math.MaxUint64}
	}
	return ord{o.hi, o.lo | (uint64(1)<<hostBits - 1)}
}

// podSpace returns the space of pod range p: the network address, the gateway (the first
// address after it, the bridge's) and the IPv4 broadcast address are never handed out.
func podSpace(p netip.Prefix) (*space, error) {
	if !p.IsValid() || (p.Addr().Is4In6() && p.Bits() < 96) {
		return nil, fmt.Errorf("ipam: invalid pod range %q", p)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
	net := ordOfAddr(p.Addr())
	last := lastAddr(p)
	v6 := p.Addr().Is6()
	if !v6 {
		last = last.prev() // broadcast
	}
	first := net.add(2)
	if last.cmp(first) < 0 || first.cmp(net) <= 0 {
		return nil, fmt.Errorf("ipam: pod range %s is too small: it needs room for the network address, the gateway and at least one pod", p)
	}
	return &space{
		kind: KindPod, pool: poolName(KindPod, v6), id: p.String(), v6: v6, width: width(v6),
		first: first, last: last, split: first, gateway: addrOfOrd(net.next(), v6), prefix: p,
	}, nil
}

// serviceSpace returns the space of service range p, banded as in KEP-3070: dynamic
// allocation takes the upper band first; the lower band (offset = min(max(16, size/16), 256)
// addresses) stays for explicitly requested VIPs. The network address and the IPv4 broadcast
// address are never handed out.
func serviceSpace(p netip.Prefix) (*space, error) {
	if !p.IsValid() || (p.Addr().Is4In6() && p.Bits() < 96) {
		return nil, fmt.Errorf("ipam: invalid service range %q", p)
	}
	p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
	net := ordOfAddr(p.Addr())
	last := lastAddr(p)
	v6 := p.Addr().Is6()
	if !v6 {
		last = last.prev()
	}
	first := net.next()
	if last.cmp(first) < 0 || first.cmp(net) <= 0 {
		return nil, fmt.Errorf("ipam: service range %s is too small: it has no usable address", p)
	}
	s := &space{kind: KindService, pool: poolName(KindService, v6), id: p.String(), v6: v6, width: width(v6),
		first: first, last: last, prefix: p}
	s.split = bandSplit(first, last, ServiceBandOffset(s.size()))
	return s, nil
}

// PortRange is an inclusive range of node ports, e.g. 30000-32767. It has the layout of
// config.PortRange, so one converts to the other: ipam.PortRange(cfg.NodePortRange).
type PortRange struct{ Min, Max uint16 }

// DefaultNodePortRange is Kubernetes' default service-node-port-range.
var DefaultNodePortRange = PortRange{30000, 32767}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// Contains reports whether port p is in r.
func (r PortRange) Contains(p uint16) bool { return r.Min <= p && p <= r.Max }

// Size returns the number of ports in r.
func (r PortRange) Size() int { return int(r.Max) - int(r.Min) + 1 }

// ParsePortRange parses "FIRST-LAST" (or a single port). It fails on anything else, on port 0
// and when FIRST > LAST.
func ParsePortRange(s string) (PortRange, error) {
	a, b, found := strings.Cut(strings.TrimSpace(s), "-")
	if !found {
		b = a
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || first == 0 || first > last {
		return PortRange{}, fmt.Errorf("ipam: invalid port range %q: want FIRST-LAST with 1 <= FIRST <= LAST <= 65535", s)
	}
	return PortRange{uint16(first), uint16(last)}, nil
}

// nodePortSpace returns the space of node port range r, banded as in KEP-3668: dynamic
// allocation takes the upper band first; the lower band (offset = min(max(16, size/32), 128)
// ports) stays for explicitly requested node ports.
func nodePortSpace(r PortRange) (*space, error) {
	if r.Min == 0 || r.Min > r.Max {
		return nil, fmt.Errorf("ipam: invalid node port range %s", r)
	}
	s := &space{kind: KindNodePort, pool: poolName(KindNodePort, false), id: r.String(), width: 2,
		first: ord{0, uint64(r.Min)}, last: ord{0, uint64(r.Max)}}
	s.split = bandSplit(s.first, s.last, NodePortBandOffset(s.size()))
	return s, nil
}

// ServiceBandOffset returns the size of the lower (static) band of a service range of size
// usable addresses, as in KEP-3070: min(max(16, size/16), 256).
func ServiceBandOffset(size uint64) uint64 { return min(max(16, size/16), 256) }

// NodePortBandOffset returns the size of the lower (static) band of a node port range of size
// ports, as in KEP-3668: min(max(16, size/32), 128).
func NodePortBandOffset(size uint64) uint64 { return min(max(16, size/32), 128) }

// bandSplit returns the first item of the upper band; first when the range is no larger than
// the offset (then there is one band only).
func bandSplit(first, last ord, offset uint64) ord {
	if count(first, last) <= offset {
		return first
	}
	return first.add(offset)
}

// itemWidth returns the key width of items of a kind and family.
func itemWidth(k Kind, v6 bool) int {
	if k == KindNodePort {
		return 2
	}
	return width(v6)
}

func width(v6 bool) int {
	if v6 {
		return 16
	}
	return 4
}

// unmapBits returns how many prefix bits an IPv4-mapped IPv6 prefix loses when unmapped.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}
