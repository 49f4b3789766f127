package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/source/kube"
)

type fakeView struct {
	stale bool
	pods  []kube.PodIdentity
}

func (v *fakeView) Stale() bool                       { return v.stale }
func (v *fakeView) PodIdentities() []kube.PodIdentity { return v.pods }

type gcClock struct {
	mu   sync.Mutex
	wall time.Time
	mono time.Duration
}

func (c *gcClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.wall }
func (c *gcClock) Mono() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}
func (c *gcClock) Jump(d time.Duration) { c.mu.Lock(); c.wall = c.wall.Add(d); c.mu.Unlock() }
func (c *gcClock) Pass(d time.Duration) {
	c.mu.Lock()
	c.wall, c.mono = c.wall.Add(d), c.mono+d
	c.mu.Unlock()
}

func gcSetup(t *testing.T, owners ...ipam.PodOwner) (*ipam.PodAllocator, *gcClock) {
	t.Helper()
	c := &gcClock{wall: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := ipam.Open(t.TempDir(), ipam.Options{Now: c.Now, Mono: c.Mono, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	a, err := s.NewPodAllocator([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, "node1")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range owners {
		if o.IfName == "" {
			o.IfName = "eth0"
		}
		if _, err := a.AllocatePod(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	return a, c
}

func freedIDs(f []ipam.PodAllocation) []string {
	var out []string
	for _, a := range f {
		out = append(out, a.Owner.ContainerID)
	}
	return out
}

func pid(ns, name, uid string) kube.PodIdentity {
	return kube.PodIdentity{Namespace: ns, Name: name, UID: uid}
}

var gcQuiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Pods are matched by UID: a pod recreated under the same name is a new pod, the old one's
// IPs go; a live pod (by UID, or by name for records without UID) stays.
func TestClusterPodGCMatchesUID(t *testing.T) {
	a, c := gcSetup(t,
		ipam.PodOwner{ContainerID: "old", Namespace: "ns", Name: "db-0", UID: "u1"},
		ipam.PodOwner{ContainerID: "web", Namespace: "ns", Name: "web", UID: "u2"},
		ipam.PodOwner{ContainerID: "legacy", Namespace: "ns", Name: "legacy"},
		ipam.PodOwner{ContainerID: "anon"})
	v := &fakeView{pods: []kube.PodIdentity{pid("ns", "db-0", "u9"), pid("ns", "web", "u2"), pid("ns", "legacy", "u3")}}
	tr := ipam.NewGCTracker(2*time.Minute, c.Mono)
	ctx := context.Background()
	if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 0 {
		t.Fatalf("first pass freed %v", freedIDs(f))
	}
	c.Pass(2 * time.Minute)
	if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 1 || f[0].Owner.ContainerID != "old" {
		t.Fatalf("pass after the grace freed %v, want [old]", freedIDs(f))
	}
}

// While the API view is stale nothing is freed, and the grace starts over once it is fresh.
func TestClusterPodGCSkipsWhileStale(t *testing.T) {
	a, c := gcSetup(t, ipam.PodOwner{ContainerID: "gone", Namespace: "ns", Name: "gone", UID: "u1"},
		ipam.PodOwner{ContainerID: "live", Namespace: "ns", Name: "live", UID: "u2"})
	v := &fakeView{pods: []kube.PodIdentity{pid("ns", "live", "u2")}}
	tr := ipam.NewGCTracker(2*time.Minute, c.Mono)
	ctx := context.Background()
	clusterPodGC(ctx, a, tr, v, gcQuiet)
	v.stale, v.pods = true, nil // the view went stale (and its cache is empty)
	for range 5 {
		c.Pass(time.Minute)
		if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 0 {
			t.Fatalf("stale pass freed %v", freedIDs(f))
		}
	}
	v.stale, v.pods = false, []kube.PodIdentity{pid("ns", "live", "u2")}
	if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 0 {
		t.Fatalf("first fresh pass freed %v: the grace must start over", freedIDs(f))
	}
	c.Pass(2 * time.Minute)
	if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 1 || f[0].Owner.ContainerID != "gone" {
		t.Fatalf("freed %v, want [gone]", freedIDs(f))
	}
}

// A view that lost most pods (partial cache): one pass frees at most half.
func TestClusterPodGCCap(t *testing.T) {
	var owners []ipam.PodOwner
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		owners = append(owners, ipam.PodOwner{ContainerID: id, Namespace: "ns", Name: id, UID: "u-" + id})
	}
	a, c := gcSetup(t, owners...)
	v := &fakeView{pods: []kube.PodIdentity{pid("ns", "a", "u-a")}}
	tr := ipam.NewGCTracker(time.Minute, c.Mono)
	ctx := context.Background()
	clusterPodGC(ctx, a, tr, v, gcQuiet)
	c.Pass(time.Minute)
	if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 3 {
		t.Fatalf("freed %v, want 3 of 6", freedIDs(f))
	}
}

// The wall clock jumps hours forward and back: live pods are never freed; a gone pod goes
// after the grace measured on the monotonic clock.
func TestClusterPodGCClockJumps(t *testing.T) {
	for _, jump := range []time.Duration{6 * time.Hour, -6 * time.Hour} {
		t.Run(jump.String(), func(t *testing.T) {
			a, c := gcSetup(t, ipam.PodOwner{ContainerID: "live", Namespace: "ns", Name: "live", UID: "u1"},
				ipam.PodOwner{ContainerID: "gone", Namespace: "ns", Name: "gone", UID: "u2"})
			v := &fakeView{pods: []kube.PodIdentity{pid("ns", "live", "u1"), pid("ns", "gone", "u2")}}
			tr := ipam.NewGCTracker(2*time.Minute, c.Mono)
			ctx := context.Background()
			for range 4 {
				c.Jump(jump)
				c.Pass(time.Minute)
				if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 0 {
					t.Fatalf("freed live pods %v", freedIDs(f))
				}
			}
			v.pods = v.pods[:1]
			c.Jump(jump)
			clusterPodGC(ctx, a, tr, v, gcQuiet)
			c.Jump(-3 * jump)
			c.Pass(time.Minute)
			if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 0 {
				t.Fatalf("freed %v before the monotonic grace", freedIDs(f))
			}
			c.Pass(time.Minute)
			if f := clusterPodGC(ctx, a, tr, v, gcQuiet); len(f) != 1 || f[0].Owner.ContainerID != "gone" {
				t.Fatalf("freed %v, want [gone]", freedIDs(f))
			}
		})
	}
}
