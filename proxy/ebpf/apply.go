package ebpf

import (
	"fmt"
	"sort"
)

// mapWriter is the kernel side of an apply: one call per map entry. The real one writes the
// pinned BPF maps; tests use a recorder that checks every intermediate state.
type mapWriter interface {
	putService(k svcKey, v svcValue) error
	delService(k svcKey) error
	putBackend(id uint32, v backendVal) error
	delBackend(id uint32) error
	putRevNat(id uint16, v revNatValue) error
	delRevNat(id uint16) error
	putRange(k rangeKey) error
	delRange(k rangeKey) error
}

// applyResult counts what an apply wrote.
type applyResult struct {
	objects int
	// changed holds the slot-0 keys of the frontends written or removed.
	changed map[svcKey]bool
	// removedBackends are the backends deleted from the backend map.
	removedBackends []backendVal
}

// apply makes the maps behind w hold want, given that they hold have, writing only what
// differs. have is updated as writes succeed, so after an error it still describes the maps.
// The order keeps every intermediate state consistent for a reader:
//  1. backends and rev-NAT entries that are new or changed;
//  2. per frontend: the backend slots, then slot 0 (count and qcount), then the slots beyond
//     the new total — so a reader never sees a count whose slots are not filled;
//  3. frontends no longer wanted: slot 0 first, then their slots;
//  4. source ranges, backends and rev-NAT entries no longer referenced.
//
// Source ranges are written in step 1 too, before a slot 0 announces them.
func apply(w mapWriter, have, want *Entries) (applyResult, error) {
	res := applyResult{changed: map[svcKey]bool{}}
	for _, id := range sortedIDs(want.Backends) {
		v := want.Backends[id]
		if old, ok := have.Backends[id]; ok && old == v {
			continue
		}
		if err := w.putBackend(id, v); err != nil {
			return res, fmt.Errorf("write backend %d (%s:%d): %w", id, addrFromBE(v.Addr), ntohs(v.Port), err)
		}
		have.Backends[id] = v
		res.objects++
	}
	for _, id := range sortedIDs(want.RevNat) {
		v := want.RevNat[id]
		if old, ok := have.RevNat[id]; ok && old == v {
			continue
		}
		if err := w.putRevNat(id, v); err != nil {
			return res, fmt.Errorf("write rev-NAT %d: %w", id, err)
		}
		have.RevNat[id] = v
		res.objects++
	}

	for _, k := range sortedRanges(want.Ranges) {
		if _, ok := have.Ranges[k]; ok {
			continue
		}
		if err := w.putRange(k); err != nil {
			return res, fmt.Errorf("write source range %s/%d of rev-NAT %d: %w", addrFromBE(k.Addr), k.Prefixlen-32, k.RevNatId, err)
		}
		have.Ranges[k] = 1
		res.objects++
	}

	haveSlots := slotIndex(have.Services)
	for _, f := range sortedFrontends(want.Services) {
		head := want.Services[f]
		total := int(head.Count) + int(head.Qcount)
		changed := false
		for slot := 1; slot <= total; slot++ {
			k := f
			k.Slot = uint16(slot)
			v := want.Services[k]
			if old, ok := have.Services[k]; ok && old == v {
				continue
			}
			if err := w.putService(k, v); err != nil {
				return res, fmt.Errorf("write slot %d of %s: %w", slot, describe(f), err)
			}
			have.Services[k] = v
			res.objects++
			changed = true
		}
		oldHead, hadHead := have.Services[f]
		if !hadHead || oldHead != head {
			if err := w.putService(f, head); err != nil {
				return res, fmt.Errorf("publish %s: %w", describe(f), err)
			}
			have.Services[f] = head
			res.objects++
			changed = true
		}
		for _, k := range haveSlots[f] {
			if int(k.Slot) <= total {
				continue
			}
			if err := w.delService(k); err != nil {
				return res, fmt.Errorf("remove slot %d of %s: %w", k.Slot, describe(f), err)
			}
			delete(have.Services, k)
			res.objects++
			changed = true
		}
		if changed {
			res.changed[f] = true
		}
	}

	for _, f := range sortedFrontends(have.Services) {
		if _, ok := want.Services[f]; ok {
			continue
		}
		for _, k := range haveSlots[f] { // slot 0 sorts first
			if err := w.delService(k); err != nil {
				return res, fmt.Errorf("remove slot %d of %s: %w", k.Slot, describe(f), err)
			}
			delete(have.Services, k)
			res.objects++
		}
		res.changed[f] = true
	}

	for _, id := range sortedIDs(have.RevNat) {
		if _, ok := want.RevNat[id]; ok {
			continue
		}
		if err := w.delRevNat(id); err != nil {
			return res, fmt.Errorf("remove rev-NAT %d: %w", id, err)
		}
		delete(have.RevNat, id)
		res.objects++
	}
	for _, k := range sortedRanges(have.Ranges) {
		if _, ok := want.Ranges[k]; ok {
			continue
		}
		if err := w.delRange(k); err != nil {
			return res, fmt.Errorf("remove source range of rev-NAT %d: %w", k.RevNatId, err)
		}
		delete(have.Ranges, k)
		res.objects++
	}
	for _, id := range sortedIDs(have.Backends) {
		if _, ok := want.Backends[id]; ok {
			continue
		}
		v := have.Backends[id]
		if err := w.delBackend(id); err != nil {
			return res, fmt.Errorf("remove backend %d: %w", id, err)
		}
		delete(have.Backends, id)
		res.removedBackends = append(res.removedBackends, v)
		res.objects++
	}
	return res, nil
}

// slotIndex returns, per frontend (slot-0 key), the keys of m that belong to it, slot 0
// first. Stray slots beyond a gap are included, so they get removed too.
func slotIndex(m map[svcKey]svcValue) map[svcKey][]svcKey {
	idx := map[svcKey][]svcKey{}
	for k := range m {
		f := frontendOf(k)
		idx[f] = append(idx[f], k)
	}
	for _, ks := range idx {
		sort.Slice(ks, func(i, j int) bool { return ks[i].Slot < ks[j].Slot })
	}
	return idx
}

func describe(f svcKey) string {
	scope := "ext"
	if f.Scope == ScopeInt {
		scope = "int"
	}
	return fmt.Sprintf("frontend %s:%d/%d (%s)", addrFromBE(f.Addr), ntohs(f.Port), f.Proto, scope)
}

func sortedIDs[K uint16 | uint32, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func sortedRanges(m map[rangeKey]uint8) []rangeKey {
	out := make([]rangeKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.RevNatId != b.RevNatId {
			return a.RevNatId < b.RevNatId
		}
		if a.Addr != b.Addr {
			return a.Addr < b.Addr
		}
		return a.Prefixlen < b.Prefixlen
	})
	return out
}
