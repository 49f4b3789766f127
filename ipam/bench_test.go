package ipam

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkAllocatePod measures one new pod allocation (one fsync'd bbolt transaction) in a
// dual-stack /16 + /64.
func BenchmarkAllocatePod(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, b.TempDir(), nil, Options{PodCooldown: -1})
	a := podAlloc(b, s, "node1", "10.244.0.0/16", "fd00:10:244::/64")
	n := 0
	for b.Loop() {
		if n == 60000 { // keep the /16 from filling up
			b.StopTimer()
			if _, err := a.GC(ctx, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if _, err := a.AllocatePod(ctx, owner(fmt.Sprint("c", n))); err != nil {
			b.Fatal(err)
		}
		n++
	}
}

// BenchmarkAllocatePodRepeat measures an idempotent repeat (CNI ADD retried): a read-only
// transaction, no fsync.
func BenchmarkAllocatePodRepeat(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, b.TempDir(), nil, Options{})
	a := podAlloc(b, s, "node1", "10.244.0.0/16", "fd00:10:244::/64")
	if _, err := a.AllocatePod(ctx, owner("c")); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := a.AllocatePod(ctx, owner("c")); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReleasePod measures one release (the allocations are made with the timer stopped).
func BenchmarkReleasePod(b *testing.B) {
	ctx := context.Background()
	// A 1 ns cooldown: releases write cooling records as in production, and GC can purge them.
	s := openStore(b, b.TempDir(), nil, Options{PodCooldown: time.Nanosecond})
	a := podAlloc(b, s, "node1", "10.244.0.0/16", "fd00:10:244::/64")
	n := 0
	for b.Loop() {
		b.StopTimer()
		id := fmt.Sprint("c", n)
		n++
		if _, err := a.AllocatePod(ctx, owner(id)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := a.ReleasePod(ctx, id, "eth0"); err != nil {
			b.Fatal(err)
		}
		if n%30000 == 0 { // cooled records pile up: GC purges them
			b.StopTimer()
			if _, err := a.GC(ctx, nil); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
}

// BenchmarkAllocatePodNearlyFull measures an allocation when most of a /22 is taken: the
// round-robin scan has to walk past allocated addresses.
func BenchmarkAllocatePodNearlyFull(b *testing.B) {
	ctx := context.Background()
	s := openStore(b, b.TempDir(), nil, Options{PodCooldown: -1})
	a := podAlloc(b, s, "node1", "10.244.0.0/22") // 1021 usable
	for i := range 1000 {
		if _, err := a.AllocatePod(ctx, owner(fmt.Sprint("fill", i))); err != nil {
			b.Fatal(err)
		}
	}
	n := 0
	for b.Loop() {
		id := fmt.Sprint("c", n)
		n++
		if _, err := a.AllocatePod(ctx, owner(id)); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := a.ReleasePod(ctx, id, "eth0"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
