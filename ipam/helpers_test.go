package ipam

import (
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injectable clock: tests advance it, nothing sleeps.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openStore opens a store in dir with clock c, closed when the test ends.
func openStore(t testing.TB, dir string, c *fakeClock, opts Options) *Store {
	t.Helper()
	if c != nil {
		opts.Now = c.Now
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func prefixes(t testing.TB, ss ...string) []netip.Prefix {
	t.Helper()
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func podAlloc(t testing.TB, s *Store, nodeName string, cidrs ...string) *PodAllocator {
	t.Helper()
	a, err := s.NewPodAllocator(prefixes(t, cidrs...), nodeName)
	if err != nil {
		t.Fatalf("NewPodAllocator(%v): %v", cidrs, err)
	}
	return a
}

func owner(id string) PodOwner {
	return PodOwner{ContainerID: id, IfName: "eth0", Namespace: "default", Name: "pod-" + id}
}

func ipsOf(a *PodAllocation) []string {
	var out []string
	for _, ip := range a.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}
