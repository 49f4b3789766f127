package ebpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
)

// Type names for the map layouts bpf2go generated from bpf/include/svc_maps.h.
type (
	svcKey      = svcbpf.SvcSvcKey
	svcValue    = svcbpf.SvcSvcValue
	backendVal  = svcbpf.SvcBackendValue
	revNatValue = svcbpf.SvcRevnatValue
	rangeKey    = svcbpf.SvcSrcRangeKey
)

// revKey names a rev-NAT id: one frontend address, port and protocol (both scopes share it).
type revKey struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

// Entries is the content of the service, backend and rev-NAT maps, as written or as wanted.
type Entries struct {
	Services map[svcKey]svcValue
	Backends map[uint32]backendVal
	RevNat   map[uint16]revNatValue
	Ranges   map[rangeKey]uint8
}

func newEntries() *Entries {
	return &Entries{
		Services: map[svcKey]svcValue{},
		Backends: map[uint32]backendVal{},
		RevNat:   map[uint16]revNatValue{},
		Ranges:   map[rangeKey]uint8{},
	}
}

// copyEntries returns a copy of e.
func copyEntries(e *Entries) *Entries {
	c := newEntries()
	for k, v := range e.Services {
		c.Services[k] = v
	}
	for k, v := range e.Backends {
		c.Backends[k] = v
	}
	for k, v := range e.RevNat {
		c.RevNat[k] = v
	}
	for k, v := range e.Ranges {
		c.Ranges[k] = v
	}
	return c
}

// ids hands out stable backend and rev-NAT ids. 0 is never used.
type ids struct {
	backends     map[BackendKey]uint32
	backendsUsed map[uint32]BackendKey
	nextBackend  uint32
	maxBackend   uint32
	revs         map[revKey]uint16
	revsUsed     map[uint16]revKey
	nextRev      uint16
}

func newIDs(maxBackends uint32) *ids {
	return &ids{
		backends: map[BackendKey]uint32{}, backendsUsed: map[uint32]BackendKey{}, nextBackend: 1,
		maxBackend: maxBackends,
		revs:       map[revKey]uint16{}, revsUsed: map[uint16]revKey{}, nextRev: 1,
	}
}

func (t *ids) backend(k BackendKey) (uint32, error) {
	if id, ok := t.backends[k]; ok {
		return id, nil
	}
	for range t.maxBackend + 1 {
		id := t.nextBackend
		t.nextBackend++
		if t.nextBackend == 0 || t.nextBackend > t.maxBackend {
			t.nextBackend = 1
		}
		if _, used := t.backendsUsed[id]; !used {
			t.backends[k], t.backendsUsed[id] = id, k
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free backend id: all %d in use (raise MapSizes.Backends)", t.maxBackend)
}

func (t *ids) rev(k revKey) (uint16, error) {
	if id, ok := t.revs[k]; ok {
		return id, nil
	}
	for range 1 << 16 {
		id := t.nextRev
		t.nextRev++
		if t.nextRev == 0 {
			t.nextRev = 1
		}
		if _, used := t.revsUsed[id]; !used {
			t.revs[k], t.revsUsed[id] = id, k
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free rev-NAT id: all 65535 frontends in use")
}

// keep forgets every id not used by e.
func (t *ids) keep(e *Entries) {
	for k, id := range t.backends {
		if _, ok := e.Backends[id]; !ok {
			delete(t.backends, k)
			delete(t.backendsUsed, id)
		}
	}
	for k, id := range t.revs {
		if _, ok := e.RevNat[id]; !ok {
			delete(t.revs, k)
			delete(t.revsUsed, id)
		}
	}
}

// release forgets the ids in tc that e no longer uses.
func (t *ids) release(tc *touched, e *Entries) {
	for id := range tc.backends {
		if _, ok := e.Backends[id]; ok {
			continue
		}
		if k, ok := t.backendsUsed[id]; ok {
			delete(t.backends, k)
			delete(t.backendsUsed, id)
		}
	}
	for id := range tc.revs {
		if _, ok := e.RevNat[id]; ok {
			continue
		}
		if k, ok := t.revsUsed[id]; ok {
			delete(t.revs, k)
			delete(t.revsUsed, id)
		}
	}
}

// adopt takes over the ids found in maps written by an earlier run (pinned maps).
func (t *ids) adopt(e *Entries) {
	for id, v := range e.Backends {
		k := BackendKey{Addr: addrFromBE(v.Addr), Port: ntohs(v.Port), Proto: v.Proto}
		if _, dup := t.backends[k]; dup {
			continue
		}
		if _, used := t.backendsUsed[id]; used {
			continue
		}
		t.backends[k], t.backendsUsed[id] = id, k
	}
	for id, v := range e.RevNat {
		k := revKey{Addr: addrFromBE(v.Addr), Port: ntohs(v.Port), Proto: v.Proto}
		if _, dup := t.revs[k]; dup {
			continue
		}
		if _, used := t.revsUsed[id]; used {
			continue
		}
		t.revs[k], t.revsUsed[id] = id, k
	}
}

// errDuplicateFrontend reports a frontend already claimed by an earlier service.
var errDuplicateFrontend = errors.New("frontend already used by another service")

// render turns frontends into map entries, adding them to e. local tells which backends run
// on this node. A frontend already present in e or for which taken reports true (two services
// on one address and port) is skipped: the first service keeps it, and the error wraps
// errDuplicateFrontend. taken may be nil.
func render(e *Entries, fes []Frontend, local map[BackendKey]bool, t *ids, taken func(svcKey) bool) error {
	var dups []error
	for _, fe := range fes {
		base := svcKey{Addr: addrToBE(fe.Key.Addr), Port: htons(fe.Key.Port), Proto: fe.Key.Proto, Scope: fe.Key.Scope}
		if _, dup := e.Services[base]; dup || (taken != nil && taken(base)) {
			dups = append(dups, fmt.Errorf("%s: %w", describe(base), errDuplicateFrontend))
			continue
		}
		rid, err := t.rev(revKey{Addr: fe.Key.Addr, Port: fe.Key.Port, Proto: fe.Key.Proto})
		if err != nil {
			return err
		}
		e.RevNat[rid] = revNatValue{Addr: addrToBE(fe.Key.Addr), Port: htons(fe.Key.Port), Proto: fe.Key.Proto}
		if len(fe.Active)+len(fe.Terminating) > 0xffff {
			return fmt.Errorf("frontend %s:%d has %d backends, more than a slot index holds", fe.Key.Addr, fe.Key.Port, len(fe.Active)+len(fe.Terminating))
		}
		for i, b := range append(append([]BackendKey(nil), fe.Active...), fe.Terminating...) {
			id, err := t.backend(b)
			if err != nil {
				return err
			}
			var flags uint8
			if local[b] {
				flags |= beFlagLocal
			}
			e.Backends[id] = backendVal{Addr: addrToBE(b.Addr), Port: htons(b.Port), Proto: b.Proto, Flags: flags}
			k := base
			k.Slot = uint16(i + 1)
			e.Services[k] = svcValue{BackendId: id}
		}
		head := svcValue{Count: uint16(len(fe.Active)), Qcount: uint16(len(fe.Terminating)), RevNatId: rid}
		if fe.AffinitySeconds > 0 {
			head.Flags |= flagAffinity
			head.AffinityTimeout = fe.AffinitySeconds
		}
		if fe.Local {
			head.Flags |= flagLocal
		}
		if fe.Masquerade {
			head.Flags |= flagSNAT
		}
		if fe.NodeAddress {
			head.Flags |= flagNodeAddr
		}
		if fe.SourceRanges != nil {
			head.Flags |= flagRanges
			for _, p := range fe.SourceRanges {
				e.Ranges[rangeKey{Prefixlen: 32 + uint32(p.Bits()), RevNatId: rid, Addr: addrToBE(p.Addr())}] = 1
			}
		}
		e.Services[base] = head
	}
	return errors.Join(dups...)
}

// frontendOf returns the slot-0 key of k.
func frontendOf(k svcKey) svcKey {
	k.Slot = 0
	return k
}

// sortedFrontends returns the slot-0 keys present in m, in a stable order.
func sortedFrontends(m map[svcKey]svcValue) []svcKey {
	seen := map[svcKey]bool{}
	var out []svcKey
	for k := range m {
		f := frontendOf(k)
		if !seen[f] {
			seen[f] = true
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Addr != b.Addr {
			return a.Addr < b.Addr
		}
		if a.Port != b.Port {
			return a.Port < b.Port
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		return a.Scope < b.Scope
	})
	return out
}

// addrToBE returns an IPv4 address as the native-endian integer whose memory holds the
// address in network order, as the BPF side compares it.
func addrToBE(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBE(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// htons returns port as the native-endian integer whose memory holds it in network order.
func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
