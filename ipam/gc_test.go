package ipam

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// monoClock is an injectable monotonic clock, separate from the (jumping) wall clock.
type monoClock struct {
	mu sync.Mutex
	d  time.Duration
}

func (m *monoClock) Now() time.Duration { m.mu.Lock(); defer m.mu.Unlock(); return m.d }
func (m *monoClock) Advance(d time.Duration) {
	m.mu.Lock()
	m.d += d
	m.mu.Unlock()
}

// gcFixture opens a store with a wall clock and a monotonic clock and allocates n pods
// c0..c(n-1).
func gcFixture(t *testing.T, n int) (*Store, *PodAllocator, *fakeClock, *monoClock) {
	t.Helper()
	wall, mono := newFakeClock(), &monoClock{}
	s := openStore(t, t.TempDir(), wall, Options{Mono: mono.Now, PodGCGrace: time.Minute})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	for i := range n {
		if _, err := a.AllocatePod(context.Background(), owner(fmt.Sprintf("c%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	return s, a, wall, mono
}

func countPods(t *testing.T, a *PodAllocator) int {
	t.Helper()
	u, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(u.Pods)
}

func atts(ids ...string) []Attachment {
	out := make([]Attachment, len(ids))
	for i, id := range ids {
		out[i] = Attachment{id, "eth0"}
	}
	return out
}

// A runtime that lost its state sends an empty list: nothing is freed, and it is told why.
func TestPodGCEmptyListFreesNothing(t *testing.T) {
	_, a, wall, mono := gcFixture(t, 3)
	for range 3 {
		wall.Advance(time.Hour)
		mono.Advance(time.Hour)
		freed, err := a.GC(context.Background(), nil)
		if !errors.Is(err, ErrGCRefused) || len(freed) != 0 {
			t.Fatalf("GC(empty) = %d freed, %v; want none and ErrGCRefused", len(freed), err)
		}
	}
	if n := countPods(t, a); n != 3 {
		t.Fatalf("%d pods left, want 3", n)
	}
}

// An empty list on a node without allocations is a plain success.
func TestPodGCEmptyListNoAllocations(t *testing.T) {
	_, a, _, _ := gcFixture(t, 0)
	if freed, err := a.GC(context.Background(), nil); err != nil || len(freed) != 0 {
		t.Fatalf("GC(empty) on an empty node = %v, %v", freed, err)
	}
}

// A CNI ADD in flight: the runtime's list predates it. The new allocation must survive.
func TestPodGCInFlightAddSurvives(t *testing.T) {
	_, a, wall, mono := gcFixture(t, 2)
	wall.Advance(time.Hour) // c0, c1 are old by the wall clock
	mono.Advance(time.Hour)
	if _, err := a.AllocatePod(context.Background(), owner("new")); err != nil {
		t.Fatal(err)
	}
	freed, err := a.GC(context.Background(), atts("c0", "c1"))
	if err != nil || len(freed) != 0 {
		t.Fatalf("GC right after ADD freed %v (%v), want nothing", freed, err)
	}
	mono.Advance(30 * time.Second)
	wall.Advance(30 * time.Second)
	// The runtime now lists it: its missing mark is cleared.
	if freed, err := a.GC(context.Background(), atts("c0", "c1", "new")); err != nil || len(freed) != 0 {
		t.Fatalf("GC = %v, %v", freed, err)
	}
	mono.Advance(time.Minute)
	wall.Advance(time.Minute)
	if freed, err := a.GC(context.Background(), atts("c0", "c1")); err != nil || len(freed) != 0 {
		t.Fatalf("GC after the mark was cleared freed %v (%v): the grace must start again", freed, err)
	}
	mono.Advance(time.Minute)
	freed, err = a.GC(context.Background(), atts("c0", "c1"))
	if err != nil || len(freed) != 1 || freed[0].Owner.ContainerID != "new" {
		t.Fatalf("GC after the grace = %v, %v; want new freed", freed, err)
	}
}

// A truncated list: one GC call frees at most half of the allocations (rounded up).
func TestPodGCCap(t *testing.T) {
	_, a, _, mono := gcFixture(t, 10)
	ctx := context.Background()
	if freed, _ := a.GC(ctx, atts("c0")); len(freed) != 0 {
		t.Fatalf("first GC freed %d, want 0 (grace)", len(freed))
	}
	mono.Advance(2 * time.Minute)
	freed, err := a.GC(ctx, atts("c0"))
	if err != nil || len(freed) != 5 {
		t.Fatalf("GC freed %d (%v), want 5 of 10", len(freed), err)
	}
	for _, want := range []int{3, 1, 0} {
		mono.Advance(2 * time.Minute)
		if freed, err := a.GC(ctx, atts("c0")); err != nil || len(freed) != want {
			t.Fatalf("GC freed %d (%v), want %d", len(freed), err, want)
		}
	}
	if n := countPods(t, a); n != 1 {
		t.Fatalf("%d pods left, want 1 (c0)", n)
	}
}

// Wall clock jumps forward and back by hours: live attachments are never freed, and a gone
// one goes after the grace measured on the monotonic clock, not before.
func TestPodGCClockJumps(t *testing.T) {
	for _, jump := range []time.Duration{5 * time.Hour, -5 * time.Hour} {
		t.Run(jump.String(), func(t *testing.T) {
			_, a, wall, mono := gcFixture(t, 3)
			ctx := context.Background()
			wall.Advance(jump)
			if _, err := a.AllocatePod(ctx, owner("fresh")); err != nil {
				t.Fatal(err)
			}
			wall.Advance(-jump) // and back
			live := atts("c0", "c1", "c2", "fresh")
			for range 5 {
				if freed, err := a.GC(ctx, live); err != nil || len(freed) != 0 {
					t.Fatalf("GC with every attachment live freed %v (%v)", freed, err)
				}
				wall.Advance(jump)
				mono.Advance(10 * time.Second)
			}
			// fresh is in flight: missing from the list; wall clock says hours old or in the future.
			if freed, _ := a.GC(ctx, atts("c0", "c1", "c2")); len(freed) != 0 {
				t.Fatalf("GC freed %v right after a clock jump", freed)
			}
			// c2 is gone for real.
			gone := atts("c0", "c1", "fresh")
			if freed, _ := a.GC(ctx, gone); len(freed) != 0 {
				t.Fatalf("GC freed %v on first sight of c2 missing", freed)
			}
			wall.Advance(-2 * jump)
			mono.Advance(59 * time.Second)
			if freed, _ := a.GC(ctx, gone); len(freed) != 0 {
				t.Fatalf("GC freed %v before the monotonic grace", freed)
			}
			mono.Advance(time.Second)
			freed, err := a.GC(ctx, gone)
			if err != nil || len(freed) != 1 || freed[0].Owner.ContainerID != "c2" {
				t.Fatalf("GC after the monotonic grace = %v, %v; want c2", freed, err)
			}
		})
	}
}

// Cluster GC through Collect: pods matched by UID; same name, new UID means the old pod is gone.
func TestPodCollectByUID(t *testing.T) {
	wall, mono := newFakeClock(), &monoClock{}
	s := openStore(t, t.TempDir(), wall, Options{Mono: mono.Now})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	ctx := context.Background()
	for _, o := range []PodOwner{
		{ContainerID: "old", IfName: "eth0", Namespace: "ns", Name: "db-0", UID: "uid-1"},
		{ContainerID: "keep", IfName: "eth0", Namespace: "ns", Name: "web", UID: "uid-2"},
		{ContainerID: "legacy", IfName: "eth0", Namespace: "ns", Name: "legacy"},
	} {
		if _, err := a.AllocatePod(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// db-0 was recreated with a new UID; web and legacy live.
	liveUID := map[string]bool{"uid-2": true, "uid-3": true}
	liveName := map[string]bool{"ns/db-0": true, "ns/web": true, "ns/legacy": true}
	present := func(al PodAllocation) bool {
		if al.Owner.UID != "" {
			return liveUID[al.Owner.UID]
		}
		return liveName[al.Owner.Namespace+"/"+al.Owner.Name]
	}
	tr := NewGCTracker(time.Minute, mono.Now)
	if freed, _ := a.Collect(ctx, tr, present); len(freed) != 0 {
		t.Fatalf("first pass freed %v", freed)
	}
	mono.Advance(time.Minute)
	freed, err := a.Collect(ctx, tr, present)
	if err != nil || len(freed) != 1 || freed[0].Owner.ContainerID != "old" {
		t.Fatalf("Collect = %v, %v; want old (db-0 with uid-1)", freed, err)
	}
}
