package config

import (
	"fmt"
	"math/big"
	"net/netip"
	"sync"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// MemOption configures NewMemAllocator.
type MemOption struct{ apply func(*memAllocator) }

// WithNodePortRange sets the range node ports are allocated from. Without it, the range is
// the nodePortRange of the config whose BuildState uses the allocator (30000-32767 until then).
func WithNodePortRange(r PortRange) MemOption {
	return MemOption{func(m *memAllocator) { m.ports, m.fixedPorts = r, true }}
}

// NewMemAllocator returns an Allocator that keeps everything in memory: for tests and for
// `svcproxy check`, which must not touch the daemon's state. It follows the Kubernetes
// allocators: a dynamic VIP comes from the upper band of the range first, leaving the lower
// band (offset min(max(16, size/16), 256), KEP-3070) for explicit requests; node ports
// likewise (offset min(max(16, size/32), 128), KEP-3668). Dynamic picks are the lowest free
// value of the band, so results are deterministic. An owner keeps what it has until Retain
// leaves it out, which releases it at once (there is no grace period).
func NewMemAllocator(opts ...MemOption) Allocator {
	m := &memAllocator{
		ports:    DefaultNodePortRange,
		ipOwner:  map[netip.Addr]model.ServiceKey{},
		ipsOf:    map[model.ServiceKey]map[netip.Prefix]netip.Addr{},
		portUser: map[uint16]map[string]model.ServiceKey{},
		portOf:   map[string]uint16{},
		ipHint:   map[netip.Addr]netip.Addr{},
		portHint: map[int]int{},
	}
	for _, o := range opts {
		o.apply(m)
	}
	return m
}

type memAllocator struct {
	mu         sync.Mutex
	ports      PortRange
	fixedPorts bool // set by WithNodePortRange
	ipOwner    map[netip.Addr]model.ServiceKey
	ipsOf      map[model.ServiceKey]map[netip.Prefix]netip.Addr
	// portUser maps a node port to its users (port or health-check keys) and their service;
	// the ports of one service may share a node port (e.g. TCP and UDP 53).
	portUser map[uint16]map[string]model.ServiceKey
	portOf   map[string]uint16
	// ipHint and portHint remember, per band, below which value nothing is free, so that
	// allocating n values costs O(n) rather than O(n²); any release forgets them.
	ipHint   map[netip.Addr]netip.Addr
	portHint map[int]int
}

// ServiceIP implements Allocator.
func (m *memAllocator) ServiceIP(key model.ServiceKey, cidr netip.Prefix, want netip.Addr) (netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cidr = cidr.Masked()
	first, last, ok := usableRange(cidr)
	if !ok {
		return netip.Addr{}, fmt.Errorf("range %s holds no usable address", cidr)
	}
	held := m.ipsOf[key][cidr]
	if want.IsValid() {
		if !cidr.Contains(want) || want.Less(first) || last.Less(want) {
			return netip.Addr{}, fmt.Errorf("%s is not a usable address of %s", want, cidr)
		}
		if owner, taken := m.ipOwner[want]; taken && owner != key {
			return netip.Addr{}, fmt.Errorf("%s is already allocated to service %s", want, owner)
		}
		if held.IsValid() && held != want {
			delete(m.ipOwner, held)
			m.released()
		}
		m.setIP(key, cidr, want)
		return want, nil
	}
	if held.IsValid() {
		return held, nil
	}
	size := rangeSize(first, last)
	offset := min(max(16, size/16), 256)
	if offset >= size {
		offset = 0
	}
	bandStart := addN(first, offset)
	if a, ok := m.freeIP(bandStart, last); ok {
		m.setIP(key, cidr, a)
		return a, nil
	}
	if offset > 0 {
		if a, ok := m.freeIP(first, addN(first, offset-1)); ok {
			m.setIP(key, cidr, a)
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("range %s is full", cidr)
}

func (m *memAllocator) setIP(key model.ServiceKey, cidr netip.Prefix, a netip.Addr) {
	if m.ipsOf[key] == nil {
		m.ipsOf[key] = map[netip.Prefix]netip.Addr{}
	}
	m.ipsOf[key][cidr] = a
	m.ipOwner[a] = key
}

// freeIP returns the lowest unallocated address in [from, to].
func (m *memAllocator) freeIP(from, to netip.Addr) (netip.Addr, bool) {
	start := from
	if h, ok := m.ipHint[from]; ok {
		start = h
	}
	for a := start; a.IsValid() && !to.Less(a); a = a.Next() {
		if _, taken := m.ipOwner[a]; !taken {
			m.ipHint[from] = a
			return a, true
		}
	}
	m.ipHint[from] = to.Next()
	return netip.Addr{}, false
}

// released forgets the search hints after a value was freed.
func (m *memAllocator) released() {
	clear(m.ipHint)
	clear(m.portHint)
}

// useNodePortRange adopts the node port range of the config being built, unless the range
// was fixed by WithNodePortRange.
func (m *memAllocator) useNodePortRange(r PortRange) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.fixedPorts {
		m.ports = r
	}
}

// NodePort implements Allocator.
func (m *memAllocator) NodePort(key model.PortKey, want uint16) (uint16, error) {
	return m.port("port "+key.String(), key.Service, want)
}

// HealthCheckNodePort implements Allocator.
func (m *memAllocator) HealthCheckNodePort(key model.ServiceKey, want uint16) (uint16, error) {
	return m.port("healthcheck "+key.String(), key, want)
}

func (m *memAllocator) port(user string, svc model.ServiceKey, want uint16) (uint16, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	held, has := m.portOf[user]
	if want != 0 {
		if !m.ports.Contains(want) {
			return 0, fmt.Errorf("%d is outside the node port range %s", want, m.ports)
		}
		for _, owner := range m.portUser[want] {
			if owner != svc {
				return 0, fmt.Errorf("node port %d is already allocated to service %s", want, owner)
			}
		}
		if has && held != want {
			m.dropPortUser(user, held)
		}
		m.setPort(user, svc, want)
		return want, nil
	}
	if has {
		return held, nil
	}
	size := m.ports.Size()
	offset := min(max(16, size/32), 128)
	if offset >= size {
		offset = 0
	}
	try := func(from, to int) (uint16, bool) {
		start := from
		if h, ok := m.portHint[from]; ok {
			start = h
		}
		for p := start; p <= to; p++ {
			if len(m.portUser[uint16(p)]) == 0 {
				m.portHint[from] = p
				return uint16(p), true
			}
		}
		m.portHint[from] = to + 1
		return 0, false
	}
	lo, hi := int(m.ports.Min), int(m.ports.Max)
	p, ok := try(lo+offset, hi)
	if !ok && offset > 0 {
		p, ok = try(lo, lo+offset-1)
	}
	if !ok {
		return 0, fmt.Errorf("node port range %s is full", m.ports)
	}
	m.setPort(user, svc, p)
	return p, nil
}

func (m *memAllocator) setPort(user string, svc model.ServiceKey, p uint16) {
	if m.portUser[p] == nil {
		m.portUser[p] = map[string]model.ServiceKey{}
	}
	m.portUser[p][user] = svc
	m.portOf[user] = p
}

func (m *memAllocator) dropPortUser(user string, p uint16) {
	m.released()
	delete(m.portUser[p], user)
	if len(m.portUser[p]) == 0 {
		delete(m.portUser, p)
	}
	delete(m.portOf, user)
}

// Retain implements Allocator: everything of a service not in services is released at once.
func (m *memAllocator) Retain(services []model.ServiceKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := make(map[model.ServiceKey]bool, len(services))
	for _, k := range services {
		keep[k] = true
	}
	for k, ips := range m.ipsOf {
		if keep[k] {
			continue
		}
		for _, a := range ips {
			delete(m.ipOwner, a)
		}
		delete(m.ipsOf, k)
		m.released()
	}
	for p, users := range m.portUser {
		for user, svc := range users {
			if !keep[svc] {
				m.dropPortUser(user, p)
			}
		}
	}
}

// usableRange returns the first and last address of p that can be a VIP: not the network
// address, and for IPv4 not the broadcast address.
func usableRange(p netip.Prefix) (first, last netip.Addr, ok bool) {
	first = p.Addr().Next()
	last = lastAddr(p)
	if p.Addr().Is4() {
		last = last.Prev()
	}
	if !first.IsValid() || !last.IsValid() || last.Less(first) {
		return netip.Addr{}, netip.Addr{}, false
	}
	return first, last, true
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		bits := p.Bits() - i*8
		switch {
		case bits >= 8:
		case bits <= 0:
			b[i] = 0xff
		default:
			b[i] |= 0xff >> bits
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// rangeSize returns the number of addresses in [first, last], capped at 1<<30.
func rangeSize(first, last netip.Addr) int {
	a := new(big.Int).SetBytes(first.AsSlice())
	b := new(big.Int).SetBytes(last.AsSlice())
	n := new(big.Int).Sub(b, a)
	n.Add(n, big.NewInt(1))
	if n.Cmp(big.NewInt(1<<30)) > 0 {
		return 1 << 30
	}
	return int(n.Int64())
}

// addN returns a + n.
func addN(a netip.Addr, n int) netip.Addr {
	v := new(big.Int).SetBytes(a.AsSlice())
	v.Add(v, big.NewInt(int64(n)))
	b := v.FillBytes(make([]byte, len(a.AsSlice())))
	out, _ := netip.AddrFromSlice(b)
	return out
}
