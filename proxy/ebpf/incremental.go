package ebpf

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// desired is the wanted content of the maps, kept between syncs together with what each
// service contributes to it, so a partial sync re-renders and diffs only the changed services.
type desired struct {
	want    *Entries
	perSvc  map[model.ServiceKey]*Entries
	backRef map[uint32]int
	revRef  map[uint16]int
	rngRef  map[rangeKey]int
}

func newDesired() *desired {
	return &desired{
		want: newEntries(), perSvc: map[model.ServiceKey]*Entries{},
		backRef: map[uint32]int{}, revRef: map[uint16]int{}, rngRef: map[rangeKey]int{},
	}
}

// touched collects the keys a partial sync may change.
type touched struct {
	frontends map[svcKey]bool
	backends  map[uint32]bool
	revs      map[uint16]bool
	ranges    map[rangeKey]bool
}

func newTouched() *touched {
	return &touched{frontends: map[svcKey]bool{}, backends: map[uint32]bool{}, revs: map[uint16]bool{}, ranges: map[rangeKey]bool{}}
}

func (t *touched) add(e *Entries) {
	for k := range e.Services {
		t.frontends[frontendOf(k)] = true
	}
	for id := range e.Backends {
		t.backends[id] = true
	}
	for id := range e.RevNat {
		t.revs[id] = true
	}
	for k := range e.Ranges {
		t.ranges[k] = true
	}
}

func (d *desired) remove(k model.ServiceKey) *Entries {
	e := d.perSvc[k]
	if e == nil {
		return nil
	}
	delete(d.perSvc, k)
	for sk := range e.Services {
		delete(d.want.Services, sk)
	}
	for id := range e.Backends {
		if d.backRef[id]--; d.backRef[id] <= 0 {
			delete(d.backRef, id)
			delete(d.want.Backends, id)
		}
	}
	for id := range e.RevNat {
		if d.revRef[id]--; d.revRef[id] <= 0 {
			delete(d.revRef, id)
			delete(d.want.RevNat, id)
		}
	}
	for rk := range e.Ranges {
		if d.rngRef[rk]--; d.rngRef[rk] <= 0 {
			delete(d.rngRef, rk)
			delete(d.want.Ranges, rk)
		}
	}
	return e
}

// add renders service s and merges it into d. Frontends another service already holds are
// skipped and logged.
func (d *desired) add(st *model.State, s *model.Service, nodeAddrs []netip.Addr, t *ids, log *slog.Logger) (*Entries, error) {
	fes, local := PlanService(st, s, nodeAddrs)
	e := newEntries()
	err := render(e, fes, local, t, func(k svcKey) bool { _, ok := d.want.Services[k]; return ok })
	if errors.Is(err, errDuplicateFrontend) {
		log.Warn("ebpf: service skipped on a frontend another service holds", "service", s.Key, "err", err)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", s.Key, err)
	}
	d.perSvc[s.Key] = e
	for k, v := range e.Services {
		d.want.Services[k] = v
	}
	for id, v := range e.Backends {
		d.backRef[id]++
		d.want.Backends[id] = v
	}
	for id, v := range e.RevNat {
		d.revRef[id]++
		d.want.RevNat[id] = v
	}
	for k, v := range e.Ranges {
		d.rngRef[k]++
		d.want.Ranges[k] = v
	}
	return e, nil
}

// views returns the parts of want and have that t covers. A frontend's slots are found
// from its slot 0 (stray slots are left to the next full sync).
func views(t *touched, want, have *Entries) (wantV, haveV *Entries) {
	wantV, haveV = newEntries(), newEntries()
	copyFrontend := func(dst, src *Entries, f svcKey) {
		head, ok := src.Services[f]
		if !ok {
			return
		}
		dst.Services[f] = head
		for s := 1; s <= int(head.Count)+int(head.Qcount); s++ {
			k := f
			k.Slot = uint16(s)
			if v, ok := src.Services[k]; ok {
				dst.Services[k] = v
			}
		}
	}
	for f := range t.frontends {
		copyFrontend(wantV, want, f)
		copyFrontend(haveV, have, f)
	}
	for id := range t.backends {
		if v, ok := want.Backends[id]; ok {
			wantV.Backends[id] = v
		}
		if v, ok := have.Backends[id]; ok {
			haveV.Backends[id] = v
		}
	}
	for id := range t.revs {
		if v, ok := want.RevNat[id]; ok {
			wantV.RevNat[id] = v
		}
		if v, ok := have.RevNat[id]; ok {
			haveV.RevNat[id] = v
		}
	}
	for k := range t.ranges {
		if v, ok := want.Ranges[k]; ok {
			wantV.Ranges[k] = v
		}
		if v, ok := have.Ranges[k]; ok {
			haveV.Ranges[k] = v
		}
	}
	return wantV, haveV
}

// mergeBack writes the outcome of an apply on haveV (whose keys before the apply were
// before) into have.
func mergeBack(have, haveV *Entries, before *Entries) {
	for k := range before.Services {
		if _, ok := haveV.Services[k]; !ok {
			delete(have.Services, k)
		}
	}
	for k, v := range haveV.Services {
		have.Services[k] = v
	}
	for id := range before.Backends {
		if _, ok := haveV.Backends[id]; !ok {
			delete(have.Backends, id)
		}
	}
	for id, v := range haveV.Backends {
		have.Backends[id] = v
	}
	for id := range before.RevNat {
		if _, ok := haveV.RevNat[id]; !ok {
			delete(have.RevNat, id)
		}
	}
	for id, v := range haveV.RevNat {
		have.RevNat[id] = v
	}
	for k := range before.Ranges {
		if _, ok := haveV.Ranges[k]; !ok {
			delete(have.Ranges, k)
		}
	}
	for k, v := range haveV.Ranges {
		have.Ranges[k] = v
	}
}

// sortedKeys returns the service keys of changes in a stable order.
func sortedKeys(m map[model.ServiceKey]struct{}) []model.ServiceKey {
	out := make([]model.ServiceKey, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}
