package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPodAllocationOrderAndExhaustion(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/29") // .0 network, .1 gateway, .7 broadcast
	var got []string
	for i := range 5 {
		al, err := a.AllocatePod(ctx, owner(fmt.Sprint("c", i)))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if len(al.IPs) != 1 || al.IPs[0].Gateway != netip.MustParseAddr("10.244.1.1") {
			t.Fatalf("allocation %d: got %+v, want one IP with gateway 10.244.1.1", i, al.IPs)
		}
		got = append(got, al.IPs[0].Address.String())
	}
	want := []string{"10.244.1.2/29", "10.244.1.3/29", "10.244.1.4/29", "10.244.1.5/29", "10.244.1.6/29"}
	if !slices.Equal(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
	_, err := a.AllocatePod(ctx, owner("c5"))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("6th allocation: err = %v, want ErrExhausted", err)
	}
	for _, part := range []string{"10.244.1.0/29", "5 usable", "5 allocated", "pod default/pod-c5"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("exhaustion error %q does not contain %q", err, part)
		}
	}
	if err := a.Available(ctx); !errors.Is(err, ErrExhausted) {
		t.Errorf("Available on a full range = %v, want ErrExhausted", err)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Ranges[0]; r.Size != 5 || r.Used != 5 || r.Free != 0 || r.CoolingDown != 0 {
		t.Errorf("usage = %+v, want size 5 used 5 free 0", r)
	}
	if len(st.Pods) != 5 || len(st.Items) != 5 {
		t.Errorf("status lists %d pods / %d items, want 5 / 5", len(st.Pods), len(st.Items))
	}
}

func TestPodRoundRobinAndCooldown(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), clock, Options{}) // default cooldown 30 s
	a := podAlloc(t, s, "node1", "10.244.1.0/29")
	for i := range 3 {
		if _, err := a.AllocatePod(ctx, owner(fmt.Sprint("c", i))); err != nil { // .2 .3 .4
			t.Fatal(err)
		}
	}
	freed, err := a.ReleasePod(ctx, "c1", "eth0") // frees .3
	if err != nil || freed == nil || ipsOf(freed)[0] != "10.244.1.3/29" {
		t.Fatalf("ReleasePod(c1) = %v, %v; want the allocation of 10.244.1.3", freed, err)
	}
	// Round-robin goes on after the last allocated address, not back to the freed one.
	for i, want := range []string{"10.244.1.5/29", "10.244.1.6/29"} {
		al, err := a.AllocatePod(ctx, owner(fmt.Sprint("n", i)))
		if err != nil || ipsOf(al)[0] != want {
			t.Fatalf("allocation n%d = %v, %v; want %s", i, al, err, want)
		}
	}
	// .3 is the only free address but it cools down.
	st, _ := a.Status(ctx)
	if r := st.Ranges[0]; r.Used != 4 || r.CoolingDown != 1 || r.Free != 0 {
		t.Errorf("usage while cooling = %+v, want used 4 cooling 1 free 0", r)
	}
	_, err = a.AllocatePod(ctx, owner("x"))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "1 cooling down") {
		t.Fatalf("allocation during cooldown: err = %v, want ErrExhausted mentioning 1 cooling down", err)
	}
	clock.Advance(DefaultPodCooldown - time.Second)
	if _, err = a.AllocatePod(ctx, owner("x")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation 1 s before the cooldown ends: err = %v, want ErrExhausted", err)
	}
	clock.Advance(time.Second)
	al, err := a.AllocatePod(ctx, owner("x"))
	if err != nil || ipsOf(al)[0] != "10.244.1.3/29" {
		t.Fatalf("allocation after cooldown = %v, %v; want 10.244.1.3/29", al, err)
	}
}

func TestPodCooldownConfigurable(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), clock, Options{PodCooldown: 5 * time.Second})
	a := podAlloc(t, s, "node1", "10.244.1.0/30") // one usable address: .2
	if _, err := a.AllocatePod(ctx, owner("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReleasePod(ctx, "a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocatePod(ctx, owner("b")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("during 5 s cooldown: %v, want ErrExhausted", err)
	}
	clock.Advance(5 * time.Second)
	if _, err := a.AllocatePod(ctx, owner("b")); err != nil {
		t.Fatalf("after 5 s cooldown: %v", err)
	}
}

func TestPodGenerations(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{PodCooldown: -1})
	a := podAlloc(t, s, "node1", "10.244.1.0/30") // one usable address: .2
	first, err := a.AllocatePod(ctx, owner("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReleasePod(ctx, "a", "eth0"); err != nil {
		t.Fatal(err)
	}
	second, err := a.AllocatePod(ctx, owner("b"))
	if err != nil {
		t.Fatal(err)
	}
	addr := second.IPs[0].Address.Addr()
	if addr != first.IPs[0].Address.Addr() || second.Generation <= first.Generation {
		t.Fatalf("reuse: first %v gen %d, second %v gen %d; want same address, higher generation",
			ipsOf(first), first.Generation, ipsOf(second), second.Generation)
	}
	// A late release carrying the first generation must not free b's address.
	if got, err := a.ReleasePodIP(ctx, addr, first.Generation); err != nil || got != nil {
		t.Fatalf("late ReleasePodIP = %v, %v; want a no-op", got, err)
	}
	if got, err := a.ReleasePodGeneration(ctx, "b", "eth0", first.Generation); err != nil || got != nil {
		t.Fatalf("ReleasePodGeneration with a stale generation = %v, %v; want a no-op", got, err)
	}
	if _, err := a.CheckPod(ctx, "b", "eth0"); err != nil {
		t.Fatalf("b lost its address after stale releases: %v", err)
	}
	if _, err := a.AllocatePod(ctx, owner("c")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("the address was freed by a stale release: allocation for c: %v", err)
	}
	if got, err := a.ReleasePodIP(ctx, addr, second.Generation); err != nil || got == nil || got.Owner.ContainerID != "b" {
		t.Fatalf("ReleasePodIP with the current generation = %v, %v; want b's allocation", got, err)
	}
	if _, err := a.CheckPod(ctx, "b", "eth0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CheckPod after release: %v, want ErrNotFound", err)
	}
}

func TestPodIdempotentAndLabels(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/24", "fd00:10:244:1::/64")
	o := owner("c1")
	o.Labels = map[string]string{"app": "web"}
	x, err := a.AllocatePod(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	o2 := PodOwner{ContainerID: "c1", IfName: "eth0", Labels: map[string]string{"app": "web", "tier": "front"}}
	y, err := a.AllocatePod(ctx, o2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ipsOf(x), ipsOf(y)) || x.Generation != y.Generation {
		t.Fatalf("repeat allocation: %v gen %d then %v gen %d; want the same", ipsOf(x), x.Generation, ipsOf(y), y.Generation)
	}
	if y.Owner.Name != "pod-c1" || y.Owner.Labels["tier"] != "front" {
		t.Fatalf("owner after repeat = %+v; want name kept and labels updated", y.Owner)
	}
	// A second interface of the same container is a separate attachment of the same pod.
	o3 := o
	o3.IfName = "net1"
	z, err := a.AllocatePod(ctx, o3)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Equal(ipsOf(x), ipsOf(z)) {
		t.Fatalf("net1 got eth0's addresses %v", ipsOf(z))
	}
	if _, err := a.AllocatePod(ctx, owner("c2")); err != nil {
		t.Fatal(err)
	}
	pods, err := a.Pods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 2 {
		t.Fatalf("Pods() = %+v, want 2 pods", pods)
	}
	p := pods[0]
	if p.Namespace != "default" || p.Name != "pod-c1" || p.NodeName != "node1" || !p.Ready || len(p.IPs) != 4 || p.Labels["tier"] != "front" {
		t.Fatalf("pod c1 = %+v; want default/pod-c1 on node1, ready, 4 IPs, labels with tier", p)
	}
}

func TestPodDualStackAndIPv6(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/24", "fd00:10:244:1::/64")
	al, err := a.AllocatePod(ctx, owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	want := []PodIP{
		{netip.MustParsePrefix("10.244.1.2/24"), netip.MustParseAddr("10.244.1.1")},
		{netip.MustParsePrefix("fd00:10:244:1::2/64"), netip.MustParseAddr("fd00:10:244:1::1")},
	}
	if !slices.Equal(al.IPs, want) {
		t.Fatalf("dual-stack allocation = %v, want %v", al.IPs, want)
	}
	if g := a.Gateways(); g[0].String() != "10.244.1.1/24" || g[1].String() != "fd00:10:244:1::1/64" {
		t.Errorf("Gateways() = %v", g)
	}
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := st.Ranges[1]; r.Size != 1<<64-2 || r.Used != 1 {
		t.Errorf("IPv6 /64 usage = %+v, want size 2^64-2, used 1", r)
	}

	// An IPv6 /126: ::0 network, ::1 gateway, ::2 and ::3 usable (no broadcast in IPv6).
	b := podAlloc(t, s, "node1", "fd00:1::/126")
	var got []string
	for i := range 2 {
		al, err := b.AllocatePod(ctx, owner(fmt.Sprint("v6-", i)))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ipsOf(al)...)
	}
	if !slices.Equal(got, []string{"fd00:1::2/126", "fd00:1::3/126"}) {
		t.Fatalf("IPv6 /126 addresses = %v", got)
	}
	if _, err := b.AllocatePod(ctx, owner("v6-x")); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "fd00:1::/126") {
		t.Fatalf("full IPv6 range: %v, want ErrExhausted naming fd00:1::/126", err)
	}

	// Dual-stack allocation is all or nothing: a full IPv6 range leaves the IPv4 one untouched.
	c := podAlloc(t, s, "node1", "10.244.9.0/24", "fd00:1::/126")
	if _, err := c.AllocatePod(ctx, owner("ds")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("dual-stack with full IPv6 range: %v", err)
	}
	st, _ = c.Status(ctx)
	if st.Ranges[0].Used != 0 {
		t.Fatalf("IPv4 range has %d allocations after a failed dual-stack allocation, want 0", st.Ranges[0].Used)
	}
}

func TestPodSeveralRangesOneFamily(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/30", "10.244.2.0/30")
	x, err := a.AllocatePod(ctx, owner("a"))
	if err != nil {
		t.Fatal(err)
	}
	y, err := a.AllocatePod(ctx, owner("b"))
	if err != nil {
		t.Fatal(err)
	}
	if ipsOf(x)[0] != "10.244.1.2/30" || ipsOf(y)[0] != "10.244.2.2/30" || y.IPs[0].Gateway.String() != "10.244.2.1" {
		t.Fatalf("got %v and %v (gw %v), want 10.244.1.2/30 then 10.244.2.2/30 gw 10.244.2.1", ipsOf(x), ipsOf(y), y.IPs[0].Gateway)
	}
	_, err = a.AllocatePod(ctx, owner("c"))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.244.1.0/30") || !strings.Contains(err.Error(), "10.244.2.0/30") {
		t.Fatalf("both full: %v, want ErrExhausted naming both ranges", err)
	}
	if _, err := s.NewPodAllocator(prefixes(t, "10.244.0.0/16", "10.244.1.0/24"), "n"); err == nil {
		t.Error("overlapping pod ranges accepted")
	}
	if _, err := s.NewPodAllocator(prefixes(t, "10.244.1.0/31"), "n"); err == nil {
		t.Error("a /31 pod range (no room for a pod) accepted")
	}
}

func TestPodReleaseUnknownCheckAndRangeChange(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	if got, err := a.ReleasePod(ctx, "nope", "eth0"); got != nil || err != nil {
		t.Fatalf("ReleasePod(unknown) = %v, %v; want nil, nil", got, err)
	}
	if _, err := a.CheckPod(ctx, "nope", "eth0"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CheckPod(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := a.AllocatePod(ctx, PodOwner{ContainerID: "x"}); err == nil {
		t.Fatal("allocation without ifname accepted")
	}
	old, err := a.AllocatePod(ctx, owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := a.CheckPod(ctx, "c1", "eth0"); err != nil || got.Generation != old.Generation {
		t.Fatalf("CheckPod = %v, %v", got, err)
	}
	// The node's podCIDR changed: CHECK fails, a repeated ADD moves the pod to the new range
	// and frees the old address.
	b := podAlloc(t, s, "node1", "10.244.7.0/24")
	if _, err := b.CheckPod(ctx, "c1", "eth0"); err == nil || !strings.Contains(err.Error(), "no pod range") {
		t.Fatalf("CheckPod after the range changed = %v, want an error about the range", err)
	}
	moved, err := b.AllocatePod(ctx, owner("c1"))
	if err != nil || ipsOf(moved)[0] != "10.244.7.2/24" {
		t.Fatalf("re-ADD after range change = %v, %v", moved, err)
	}
	st, _ := a.Status(ctx)
	if st.Ranges[0].Used != 0 || st.Ranges[0].CoolingDown != 1 {
		t.Fatalf("old range usage = %+v, want the old address cooling down", st.Ranges[0])
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPodGC(t *testing.T) {
	ctx := context.Background()
	mono := &monoClock{}
	s := openStore(t, t.TempDir(), newFakeClock(), Options{Mono: mono.Now})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	for _, id := range []string{"a", "b", "c", "d"} {
		if _, err := a.AllocatePod(ctx, owner(id)); err != nil {
			t.Fatal(err)
		}
	}
	valid := []Attachment{{"b", "eth0"}, {"d", "eth0"}, {"zzz", "eth0"}}
	if freed, err := a.GC(ctx, valid); err != nil || len(freed) != 0 {
		t.Fatalf("first GC = %v, %v; want nothing freed before the grace period", freed, err)
	}
	mono.Advance(DefaultPodGCGrace)
	freed, err := a.GC(ctx, valid)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, f := range freed {
		ids = append(ids, f.Owner.ContainerID)
	}
	if !slices.Equal(ids, []string{"a", "c"}) {
		t.Fatalf("GC freed %v, want [a c]", ids)
	}
	pods, _ := a.Pods(ctx)
	if len(pods) != 2 || pods[0].Name != "pod-b" || pods[1].Name != "pod-d" {
		t.Fatalf("pods after GC = %+v, want b and d", pods)
	}
	if freed, err := a.GC(ctx, nil); !errors.Is(err, ErrGCRefused) || len(freed) != 0 {
		t.Fatalf("GC(nil) freed %d (%v), want none and ErrGCRefused", len(freed), err)
	}
}

func TestStoreReopenKeepsEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFakeClock()
	s, err := Open(dir, Options{Now: clock.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	var allocs []*PodAllocation
	for i := range 5 {
		al, err := a.AllocatePod(ctx, owner(fmt.Sprint("c", i)))
		if err != nil {
			t.Fatal(err)
		}
		allocs = append(allocs, al)
	}
	if _, err := a.ReleasePod(ctx, "c4", "eth0"); err != nil { // .6 cools down
		t.Fatal(err)
	}
	sa, err := s.NewServiceAllocator(ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	vip, err := sa.ServiceIP(svcKey("web"), netip.MustParsePrefix("10.96.0.0/16"), netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	np, err := sa.NodePort(portKey("web", "http"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	clock.Advance(time.Second)
	s2 := openStore(t, dir, clock, Options{})
	a2 := podAlloc(t, s2, "node1", "10.244.1.0/24")
	for _, al := range allocs[:4] {
		got, err := a2.CheckPod(ctx, al.Owner.ContainerID, "eth0")
		if err != nil || !slices.Equal(ipsOf(got), ipsOf(al)) || got.Generation != al.Generation || !got.Allocated.Equal(al.Allocated) {
			t.Fatalf("after reopen %s: %v, %v; want %v gen %d", al.Owner.ContainerID, got, err, ipsOf(al), al.Generation)
		}
	}
	// Round-robin and cooldown go on where they were: next is .7, not .6 (cooling) or .2.
	al, err := a2.AllocatePod(ctx, owner("new"))
	if err != nil || ipsOf(al)[0] != "10.244.1.7/24" || al.Generation <= allocs[4].Generation {
		t.Fatalf("first allocation after reopen = %v, %v; want 10.244.1.7/24 with a higher generation", al, err)
	}
	st, _ := a2.Status(ctx)
	if st.Ranges[0].CoolingDown != 1 {
		t.Errorf("cooldown lost over reopen: %+v", st.Ranges[0])
	}
	sa2, err := s2.NewServiceAllocator(ServiceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sa2.ServiceIP(svcKey("web"), netip.MustParsePrefix("10.96.0.0/16"), netip.Addr{}); err != nil || got != vip {
		t.Fatalf("VIP after reopen = %v, %v; want %v", got, err, vip)
	}
	if got, err := sa2.NodePort(portKey("web", "http"), 0); err != nil || got != np {
		t.Fatalf("node port after reopen = %v, %v; want %v", got, err, np)
	}
	if err := s2.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestStoreLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir, nil, Options{})
	_, err := Open(dir, Options{LockTimeout: 50 * time.Millisecond, Logger: quietLogger()})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second Open = %v, want ErrLocked naming %s", err, dir)
	}
}

func TestContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := openStore(t, t.TempDir(), nil, Options{})
	a := podAlloc(t, s, "node1", "10.244.1.0/24")
	if _, err := a.AllocatePod(ctx, owner("a")); !errors.Is(err, context.Canceled) {
		t.Fatalf("AllocatePod with a canceled context: %v", err)
	}
}

// TestPodGainsFamily: the node becomes dual-stack; a repeated ADD keeps the IPv4 address, adds
// an IPv6 one, and the whole allocation has one (new) generation.
func TestPodGainsFamily(t *testing.T) {
	ctx := context.Background()
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	v4 := podAlloc(t, s, "node1", "10.244.1.0/24")
	old, err := v4.AllocatePod(ctx, owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	ds := podAlloc(t, s, "node1", "10.244.1.0/24", "fd00:1::/64")
	if _, err := ds.CheckPod(ctx, "c1", "eth0"); err == nil {
		t.Fatal("CheckPod passes although the pod lacks an IPv6 address")
	}
	al, err := ds.AllocatePod(ctx, owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := ipsOf(al); len(got) != 2 || got[0] != ipsOf(old)[0] || got[1] != "fd00:1::2/64" || al.Generation <= old.Generation {
		t.Fatalf("after gaining IPv6: %v gen %d; want %v plus fd00:1::2/64 with a generation above %d", got, al.Generation, ipsOf(old), old.Generation)
	}
	if got, err := ds.ReleasePodIP(ctx, old.IPs[0].Address.Addr(), old.Generation); err != nil || got != nil {
		t.Fatalf("release with the old generation = %v, %v; want a no-op", got, err)
	}
	if got, err := ds.ReleasePodIP(ctx, old.IPs[0].Address.Addr(), al.Generation); err != nil || got == nil {
		t.Fatalf("release of the kept IPv4 address with the new generation = %v, %v", got, err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
}
