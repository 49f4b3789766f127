package routes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func TestDesiredAndPlan(t *testing.T) {
	st := &model.State{NodeName: "n1", Nodes: []model.Node{
		{Name: "n1", Address: netip.MustParseAddr("172.31.0.2"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}},
		{Name: "n2", Address: netip.MustParseAddr("172.31.0.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00::/64")}},
		{Name: "n3", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
	}}
	d := Desired(st)
	if len(d) != 1 || d[0].String() != "10.244.2.0/24 via 172.31.0.3" {
		t.Fatalf("desired = %v", d)
	}
	cur := []Route{{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParseAddr("172.31.0.9")}, {netip.MustParsePrefix("10.244.7.0/24"), netip.MustParseAddr("172.31.0.7")}}
	add, del := Plan(d, cur)
	if len(add) != 1 || add[0].Via.String() != "172.31.0.3" || len(del) != 1 || del[0].Dst.String() != "10.244.7.0/24" {
		t.Fatalf("plan: add %v del %v", add, del)
	}
	if add, del := Plan(d, d); len(add)+len(del) != 0 {
		t.Fatalf("no-op plan: add %v del %v", add, del)
	}
}

// TestSyncInNamespace programs routes in a namespace of its own and checks the kernel's table.
func TestSyncInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	b := make([]byte, 4)
	rand.Read(b)
	name := "svcrt-" + hex.EncodeToString(b)
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	// Back to the original namespace at once: the handle below works on ns by reference.
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close(); netns.DeleteNamed(name) })

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "underlay0"}, PeerName: "underlay1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	link, _ := h.LinkByName("underlay0")
	addr, _ := netlink.ParseAddr("172.31.0.2/24")
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	peer, _ := h.LinkByName("underlay1")
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	// A route of someone else's that we must never touch.
	_, other, _ := net.ParseCIDR("10.244.9.0/24")
	if err := h.RouteAdd(&netlink.Route{Dst: other, Gw: net.ParseIP("172.31.0.9")}); err != nil {
		t.Fatal(err)
	}

	m, err := NewIn(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	want := []Route{{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParseAddr("172.31.0.3")}, {netip.MustParsePrefix("10.244.3.0/24"), netip.MustParseAddr("172.31.0.4")}}
	if n, err := m.Sync(ctx, want); err != nil || n != 2 {
		t.Fatalf("sync: %d changes, %v", n, err)
	}
	if n, err := m.Sync(ctx, want); err != nil || n != 0 {
		t.Fatalf("second sync must change nothing: %d, %v", n, err)
	}
	want[1].Via = netip.MustParseAddr("172.31.0.5")
	if n, err := m.Sync(ctx, want[1:]); err != nil || n != 2 {
		t.Fatalf("move + delete: %d changes, %v", n, err)
	}
	cur, _ := m.Current(ctx)
	if len(cur) != 1 || cur[0] != want[1] {
		t.Fatalf("kernel has %v, want %v", cur, want[1:])
	}
	// An unreachable gateway is refused with an error, and nothing else breaks.
	if _, err := m.Sync(ctx, append(want[1:], Route{netip.MustParsePrefix("10.244.4.0/24"), netip.MustParseAddr("192.0.2.1")})); err == nil {
		t.Error("a gateway off every connected network must be an error")
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	all, _ := h.RouteList(nil, netlink.FAMILY_V4)
	for _, r := range all {
		if r.Protocol == Protocol {
			t.Errorf("cleanup left %v", r)
		}
	}
	if rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: other}, netlink.RT_FILTER_DST); len(rs) != 1 {
		t.Errorf("cleanup removed a route that is not ours")
	}
}
