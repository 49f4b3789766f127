package ipam

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// heldIn returns the allocation of the store whose users include user key, if any.
func heldIn(t *testing.T, s *Store, key string) (Allocation, bool) {
	t.Helper()
	all, err := s.Allocations(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, al := range all {
		if slices.Contains(al.Users, key) {
			return al, true
		}
	}
	return Allocation{}, false
}

// TestReloadOfHeldItemsWritesNothing: asking again for what services hold, and a Retain that
// changes nothing, commit no write transaction; the answers stay the same.
func TestReloadOfHeldItemsWritesNothing(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/16")
	keys := []model.ServiceKey{svcKey("a"), svcKey("b")}
	load := func() (vips []netip.Addr, nps []uint16) {
		t.Helper()
		if _, err := a.RetainContext(ctx, keys); err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			vip, err := a.ServiceIP(k, cidr, netip.Addr{})
			if err != nil {
				t.Fatal(err)
			}
			np, err := a.NodePort(portKey(k.Name, "http"), 0)
			if err != nil {
				t.Fatal(err)
			}
			vips, nps = append(vips, vip), append(nps, np)
		}
		return vips, nps
	}
	vips, nps := load()
	load() // the first reload reads the records
	before := s.writes.Load()
	for range 3 {
		v, n := load()
		if !slices.Equal(v, vips) || !slices.Equal(n, nps) {
			t.Fatalf("reload changed assignments: %v %v -> %v %v", vips, nps, v, n)
		}
	}
	if w := s.writes.Load() - before; w != 0 {
		t.Errorf("3 reloads of an unchanged config made %d write transactions, want 0", w)
	}
	// An explicit request for the VIP held is answered the same way.
	if got, err := a.ServiceIP(svcKey("a"), cidr, vips[0]); err != nil || got != vips[0] {
		t.Fatalf("explicit request for the held VIP = %v, %v", got, err)
	}
	if w := s.writes.Load() - before; w != 0 {
		t.Errorf("explicit request for the held VIP made %d write transactions", w)
	}
}

// TestRememberedAnswersFollowWrites: what the allocator remembers never outlives a write to
// the store, whoever made it: a service released by another allocator of the store, or marked
// missing by a Retain, is served again through the store.
func TestRememberedAnswersFollowWrites(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	other := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/16")
	k := svcKey("k")
	for range 2 { // the second answer comes from memory
		if _, err := a.ServiceIP(k, cidr, netip.Addr{}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.NodePort(portKey("k", "http"), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := other.ReleaseService(ctx, k); err != nil {
		t.Fatal(err)
	}
	if _, held := heldIn(t, s, "vip:"+k.String()); held {
		t.Fatal("the VIP is still held after ReleaseService")
	}
	vip, err := a.ServiceIP(k, cidr, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	np, err := a.NodePort(portKey("k", "http"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if al, held := heldIn(t, s, "vip:"+k.String()); !held || al.Item != vip.String() {
		t.Fatalf("after the release, ServiceIP answered %v but the store has %+v (held %v)", vip, al, held)
	}
	if al, held := heldIn(t, s, "np:"+portKey("k", "http").String()); !held || al.Item != strconv.Itoa(int(np)) {
		t.Fatalf("after the release, NodePort answered %d but the store has %+v (held %v)", np, al, held)
	}

	// A Retain without k marks it missing; asking for it again brings it back in the store.
	if _, err := a.RetainContext(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if al, _ := heldIn(t, s, "vip:"+k.String()); al.MissingSince.IsZero() {
		t.Fatalf("k is not missing after a Retain without it: %+v", al)
	}
	if got, err := a.ServiceIP(k, cidr, netip.Addr{}); err != nil || got != vip {
		t.Fatalf("k asking again = %v, %v; want its VIP %v back", got, err, vip)
	}
	if al, _ := heldIn(t, s, "vip:"+k.String()); !al.MissingSince.IsZero() {
		t.Fatalf("k asked for its VIP again but the store still has it missing: %+v", al)
	}
}
