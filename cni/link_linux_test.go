package cni

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/svcproxy/svcproxy/api"
)

// newNetns makes a network namespace for the test (deleted at its end) and returns its path.
func newNetns(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("this test needs root (CI is set, so it must not skip)")
		}
		t.Skip("this test needs root")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "svcpt-cnilib-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/var/run/netns/" + name
}

func in(t *testing.T, path string, f func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// A bridge made by someone else (down, without addresses) is completed, not replaced; a
// second call changes nothing; a non-bridge link of that name is refused.
func TestEnsureBridgeAdoptsExisting(t *testing.T) {
	node := newNetns(t)
	gws := []netip.Prefix{netip.MustParsePrefix("10.244.1.1/24"), netip.MustParsePrefix("fd00:10:244:1::1/64")}
	in(t, node, func() error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "svc0"
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return err
		}
		before, err := netlink.LinkByName("svc0")
		if err != nil {
			return err
		}
		for range 2 {
			if _, err := EnsureBridge("svc0", 1400, gws); err != nil {
				return err
			}
		}
		br, err := netlink.LinkByName("svc0")
		if err != nil {
			return err
		}
		if br.Attrs().Index != before.Attrs().Index || br.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("bridge replaced or down: index %d -> %d, flags %v", before.Attrs().Index, br.Attrs().Index, br.Attrs().Flags)
		}
		addrs, err := netlink.AddrList(br, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		var got []string
		for _, a := range addrs {
			if !a.IP.IsLinkLocalUnicast() {
				got = append(got, a.IPNet.String())
			}
		}
		if strings.Join(got, ",") != "10.244.1.1/24,fd00:10:244:1::1/64" {
			return fmt.Errorf("bridge addresses %v, want each gateway once", got)
		}

		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "notabridge"}, PeerName: "notabridgep"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		if _, err := EnsureBridge("notabridge", 0, gws); err == nil || !strings.Contains(err.Error(), "not a bridge") {
			return fmt.Errorf("EnsureBridge on a veth: %v, want 'not a bridge'", err)
		}
		return nil
	})
}

// Verify notices a host veth that left the bridge; Teardown is idempotent.
func TestVerifyAndTeardown(t *testing.T) {
	node, pod := newNetns(t), newNetns(t)
	w, err := ParseAllocation(mustAlloc())
	if err != nil {
		t.Fatal(err)
	}
	podNS, err := ns.GetNS(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer podNS.Close()
	in(t, node, func() error {
		br, err := EnsureBridge(w.Bridge, 0, w.GatewayPrefixes())
		if err != nil {
			return err
		}
		host, cont, err := CreateVeth(podNS, "eth0", "svctest0", 0, w.Bridge, w.PodMAC())
		if err != nil {
			return err
		}
		if want := w.PodMAC().String(); cont.Mac != want {
			return fmt.Errorf("pod MAC %s, want %s (derived from its IP)", cont.Mac, want)
		}
		res := BuildResult(w, br, host, cont)
		if err := ConfigurePod(podNS, "eth0", res); err != nil {
			return err
		}
		if err := Verify(pod, "eth0", "svctest0", w.Bridge, res); err != nil {
			return fmt.Errorf("Verify of a wired pod: %w", err)
		}
		hl, err := netlink.LinkByName("svctest0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNoMaster(hl); err != nil {
			return err
		}
		if err := Verify(pod, "eth0", "svctest0", w.Bridge, res); err == nil || !strings.Contains(err.Error(), "not a port of bridge") {
			return fmt.Errorf("Verify of a detached veth: %v, want 'not a port of bridge'", err)
		}
		for range 2 {
			if err := Teardown(pod, "eth0", "svctest0"); err != nil {
				return err
			}
		}
		if _, err := netlink.LinkByName("svctest0"); err == nil {
			return fmt.Errorf("host veth survived Teardown")
		}
		return Teardown("/var/run/netns/svcpt-cnilib-does-not-exist", "eth0", "svctest0")
	})
}

func mustAlloc() *api.PodAllocation {
	return &api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.9/24", Gateway: "10.244.1.1"}}}
}
