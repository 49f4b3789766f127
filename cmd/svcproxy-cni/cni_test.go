package main

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/cni"
	"github.com/svcproxy/svcproxy/cni/cnitest"
)

var (
	gw4 = netip.MustParseAddr("10.244.1.1")
	gw6 = netip.MustParseAddr("fd00:10:244:1::1")
)

func dualStack() podserver.Network {
	return podserver.Network{Bridge: "svc0", MTU: 1400, Ranges: []podserver.Range{
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: gw4},
		{Prefix: netip.MustParsePrefix("fd00:10:244:1::/64"), Gateway: gw6},
	}}
}

func attachment(podNS string) podserver.Attachment {
	return podserver.Attachment{ContainerID: cnitest.CnitoolContainerID(cnitest.NsPath(podNS)), IfName: "eth0"}
}

// checkResult checks an ADD result against the allocation and the kernel.
func checkResult(t *testing.T, e *env, podNS string, res *current.Result) []netip.Addr {
	t.Helper()
	addrs := e.mem.Addrs(attachment(podNS))
	if len(addrs) != 2 {
		t.Fatalf("daemon holds %v for %s, want one IPv4 and one IPv6 address", addrs, podNS)
	}
	hostVeth := cni.HostVethName(attachment(podNS).ContainerID, "eth0")
	if res.CNIVersion != "1.1.0" || len(res.Interfaces) != 3 || res.Interfaces[0].Name != "svc0" ||
		res.Interfaces[1].Name != hostVeth || res.Interfaces[2].Name != "eth0" || res.Interfaces[2].Sandbox != cnitest.NsPath(podNS) ||
		res.Interfaces[2].Mac == "" || res.Interfaces[1].Sandbox != "" {
		t.Fatalf("result interfaces = %v, want [svc0, %s, eth0 in %s] (version 1.1.0, got %s)", res.Interfaces, hostVeth, cnitest.NsPath(podNS), res.CNIVersion)
	}
	if len(res.IPs) != 2 || len(res.Routes) != 2 {
		t.Fatalf("result has %d IPs and %d routes, want 2 and 2: %v", len(res.IPs), len(res.Routes), res)
	}
	for i, ip := range res.IPs {
		wantGW, bits := gw4, 24
		if i == 1 {
			wantGW, bits = gw6, 64
		}
		if ip.Interface == nil || *ip.Interface != 2 || ip.Address.String() != netip.PrefixFrom(addrs[i], bits).String() || ip.Gateway.String() != wantGW.String() {
			t.Fatalf("result IP %d = %v, want %s/%d on interface 2 via %s", i, ip, addrs[i], bits, wantGW)
		}
		if r := res.Routes[i]; r.GW.String() != wantGW.String() || !strings.HasSuffix(r.Dst.String(), "/0") {
			t.Fatalf("result route %d = %v, want default via %s", i, r, wantGW)
		}
	}

	// Kernel, pod side: eth0 up with both addresses and default routes via the gateways.
	cnitest.InNS(t, podNS, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 || l.Attrs().OperState != netlink.OperUp {
			return fmt.Errorf("eth0: mtu %d state %s, want 1400 up", l.Attrs().MTU, l.Attrs().OperState)
		}
		got, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for i, a := range addrs {
			want := []string{fmt.Sprintf("%s/24", a), fmt.Sprintf("%s/64", a)}[i]
			if !strings.Contains(fmt.Sprint(got), want) {
				return fmt.Errorf("eth0 addresses %v lack %s", got, want)
			}
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			routes, err := netlink.RouteList(l, fam)
			if err != nil {
				return err
			}
			found := false
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && (r.Gw.Equal(gw4.AsSlice()) || r.Gw.Equal(gw6.AsSlice())) {
					found = true
				}
			}
			if !found {
				return fmt.Errorf("no default route via the gateway in family %d: %v", fam, routes)
			}
		}
		return nil
	})

	// Kernel, node side: host veth is an up port of svc0 with hairpin on; svc0 holds the gateways.
	br := cnitest.LinkIn(t, e.node, "svc0")
	host := cnitest.LinkIn(t, e.node, hostVeth)
	if br == nil || host == nil {
		t.Fatalf("node namespace lacks bridge svc0 (%v) or host veth %s (%v)", br, hostVeth, host)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().OperState != netlink.OperUp {
		t.Fatalf("host veth %s: master %d (bridge %d), state %s; want an up port of svc0", hostVeth, host.Attrs().MasterIndex, br.Attrs().Index, host.Attrs().OperState)
	}
	cnitest.InNS(t, e.node, func() error {
		pi, err := netlink.LinkGetProtinfo(host)
		if err != nil {
			return err
		}
		if !pi.Hairpin {
			return fmt.Errorf("host veth %s: hairpin off (%s)", hostVeth, pi.String())
		}
		got, err := netlink.AddrList(br, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		if s := fmt.Sprint(got); !strings.Contains(s, "10.244.1.1/24") || !strings.Contains(s, "fd00:10:244:1::1/64") {
			return fmt.Errorf("svc0 addresses %v, want both gateways", got)
		}
		return nil
	})
	return addrs
}

func TestPodLifecycleThroughCnitool(t *testing.T) {
	e := newEnv(t, dualStack())
	podA, podB := cnitest.NetnsAdd(t, "a"), cnitest.NetnsAdd(t, "b")

	if out, err := e.Cnitool("status", cnitest.NsPath(podA), "", nil); err != nil {
		t.Fatalf("STATUS with a ready daemon: %v (%s)", err, out)
	}

	// ADD two pods; the bridge is created on the first.
	if cnitest.LinkIn(t, e.node, "svc0") != nil {
		t.Fatal("svc0 exists before the first ADD")
	}
	resA := e.Add(podA, "pod-a", map[string]string{"app": "web", "tier": "front"})
	addrsA := checkResult(t, e, podA, resA)
	resB := e.Add(podB, "pod-b", map[string]string{"app": "db"})
	addrsB := checkResult(t, e, podB, resB)
	if addrsA[0] == addrsB[0] || addrsA[1] == addrsB[1] {
		t.Fatalf("pods share an address: %v and %v", addrsA, addrsB)
	}
	pod := e.mem.Pods()[attachment(podA)]
	if pod.Namespace != "default" || pod.Name != "pod-a" || pod.Labels["app"] != "web" || pod.Labels["tier"] != "front" || pod.Netns != cnitest.NsPath(podA) {
		t.Fatalf("daemon recorded %+v for pod A, want default/pod-a with labels app=web,tier=front and its netns", pod)
	}

	for _, key := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if out, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "netns", "exec", e.node, "sysctl", "-n", key); err != nil || strings.TrimSpace(out) != "1" {
			t.Fatalf("node %s = %q (%v), want 1", key, out, err)
		}
	}

	// Traffic: each pod reaches the gateway and the other pod, in both families.
	for _, dst := range []netip.Addr{gw4, gw6, addrsB[0], addrsB[1]} {
		cnitest.Ping(t, podA, dst)
	}
	for _, dst := range []netip.Addr{addrsA[0], addrsA[1]} {
		cnitest.Ping(t, podB, dst)
	}

	// CHECK passes, fails when the pod lost its default route, passes again once restored.
	if out, err := e.Cnitool("check", cnitest.NsPath(podA), "pod-a", nil); err != nil {
		t.Fatalf("CHECK of a wired pod: %v (%s)", err, out)
	}
	if _, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "-n", podA, "route", "del", "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Cnitool("check", cnitest.NsPath(podA), "pod-a", nil); err == nil || !strings.Contains(err.Error(), "no route to 0.0.0.0/0 via 10.244.1.1") {
		t.Fatalf("CHECK without the default route: %v, want a failure naming the route", err)
	}
	if _, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "-n", podA, "route", "add", "default", "via", gw4.String()); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Cnitool("check", cnitest.NsPath(podA), "pod-a", nil); err != nil {
		t.Fatalf("CHECK after restoring the route: %v (%s)", err, out)
	}

	// A second ADD without DEL fails and leaves pod A working with its address.
	if _, err := e.Cnitool("add", cnitest.NsPath(podA), "pod-a", nil); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second ADD of pod A: %v, want 'already exists'", err)
	}
	if got := e.mem.Addrs(attachment(podA)); len(got) != 2 || got[0] != addrsA[0] {
		t.Fatalf("after the failed second ADD pod A holds %v, want %v", got, addrsA)
	}
	cnitest.Ping(t, podB, addrsA[0])

	// DEL twice: both succeed; veth and address are gone after the first.
	for i := range 2 {
		if out, err := e.Cnitool("del", cnitest.NsPath(podA), "pod-a", nil); err != nil {
			t.Fatalf("DEL %d of pod A: %v (%s)", i+1, err, out)
		}
		if l := cnitest.LinkIn(t, e.node, resA.Interfaces[1].Name); l != nil {
			t.Fatalf("host veth %s still exists after DEL", l.Attrs().Name)
		}
		if l := cnitest.LinkIn(t, podA, "eth0"); l != nil {
			t.Fatal("eth0 still exists in pod A after DEL")
		}
		if got := e.mem.Addrs(attachment(podA)); got != nil {
			t.Fatalf("pod A still holds %v after DEL", got)
		}
	}
	if err := cnitest.TryPing(podB, addrsA[0]); err == nil {
		t.Fatalf("pod B still reaches %s after pod A's DEL", addrsA[0])
	}

	// DEL of a pod whose netns is already gone succeeds and frees the address.
	podC := cnitest.NetnsAdd(t, "c")
	e.Add(podC, "pod-c", nil)
	hostC := cni.HostVethName(attachment(podC).ContainerID, "eth0")
	if _, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "netns", "del", podC); err != nil {
		t.Fatal(err)
	}
	if out, err := e.Cnitool("del", cnitest.NsPath(podC), "pod-c", nil); err != nil {
		t.Fatalf("DEL with the netns gone: %v (%s)", err, out)
	}
	if e.mem.Addrs(attachment(podC)) != nil || cnitest.LinkIn(t, e.node, hostC) != nil {
		t.Fatal("DEL with the netns gone left the address or the host veth")
	}

	// GC with valid attachments frees only the others (here a leaked allocation).
	leaked := podserver.Pod{Attachment: podserver.Attachment{ContainerID: "leaked-by-a-crash", IfName: "eth0"}}
	if _, err := e.mem.Allocate(t.Context(), leaked); err != nil {
		t.Fatal(err)
	}
	valid := []types.GCAttachment{{ContainerID: attachment(podB).ContainerID, IfName: "eth0"}}
	if out, cerr := e.Plugin("GC", map[string]any{"cni.dev/valid-attachments": valid}); cerr != nil {
		t.Fatalf("GC: %v (%s)", cerr, out)
	}
	if pods := e.mem.Pods(); len(pods) != 1 || e.mem.Addrs(attachment(podB)) == nil {
		t.Fatalf("after GC the daemon holds %v, want only pod B", pods)
	}
	cnitest.Ping(t, podB, gw4) // GC left pod B alone
	// cnitool gc passes no valid attachment: libcni DELs the cached attachment of pod B and the
	// plugin's GC frees what is left.
	if out, err := e.Cnitool("gc", cnitest.NsPath(podB), "", nil); err != nil {
		t.Fatalf("cnitool gc: %v (%s)", err, out)
	}
	if pods := e.mem.Pods(); len(pods) != 0 {
		t.Fatalf("after cnitool gc the daemon holds %v, want nothing", pods)
	}
	if l := cnitest.LinkIn(t, podB, "eth0"); l != nil {
		t.Fatal("pod B's eth0 survived cnitool gc")
	}

	// STATUS: fails with code 50 once the daemon is gone.
	e.srv.Stop()
	if _, err := e.Cnitool("status", cnitest.NsPath(podB), "", nil); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("cnitool status without daemon: %v, want a failure", err)
	}
	if _, cerr := e.Plugin("STATUS", nil); cerr == nil || cerr.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without daemon: %v, want code %d", cerr, types.ErrPluginNotAvailable)
	}
	if _, err := e.Cnitool("add", cnitest.NsPath(podB), "pod-b", nil); err == nil || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("ADD without daemon: %v, want 'not reachable'", err)
	}
	if l := cnitest.LinkIn(t, podB, "eth0"); l != nil {
		t.Fatal("ADD without daemon created eth0")
	}
}

func TestFullRangeAndRollback(t *testing.T) {
	// 10.244.1.0/30: .0 network, .1 gateway, .3 broadcast: one pod fits.
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/30"), Gateway: gw4}}}
	e := newEnv(t, n)
	podA, podB := cnitest.NetnsAdd(t, "a"), cnitest.NetnsAdd(t, "b")
	e.Add(podA, "pod-a", nil)
	if _, cerr := e.Plugin("STATUS", nil); cerr == nil || cerr.Code != types.ErrPluginNotAvailable || !strings.Contains(cerr.Msg, "10.244.1.0/30") {
		t.Fatalf("STATUS with a full range: %v, want code 50 naming the range", cerr)
	}
	if _, err := e.Cnitool("status", cnitest.NsPath(podA), "", nil); err == nil {
		t.Fatal("cnitool status with a full range succeeded")
	}
	if _, err := e.Cnitool("add", cnitest.NsPath(podB), "pod-b", nil); err == nil || !strings.Contains(err.Error(), "10.244.1.0/30") {
		t.Fatalf("ADD into a full range: %v, want a failure naming the range", err)
	}
	if cnitest.LinkIn(t, podB, "eth0") != nil || cnitest.LinkIn(t, e.node, cni.HostVethName(attachment(podB).ContainerID, "eth0")) != nil {
		t.Fatal("failed ADD left a veth")
	}
	if out, err := e.Cnitool("del", cnitest.NsPath(podA), "pod-a", nil); err != nil {
		t.Fatalf("DEL: %v (%s)", err, out)
	}
	if out, cerr := e.Plugin("STATUS", nil); cerr != nil {
		t.Fatalf("STATUS after freeing the range: %v (%s)", cerr, out)
	}

	// Rollback: an ADD that fails after the allocation releases the address. Here the node
	// has a non-bridge link (a veth) with the bridge's name.
	if _, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "-n", e.node, "link", "del", "svc0"); err != nil {
		t.Fatal(err)
	}
	if _, err := cnitest.Run(cnitest.Ctx(t), nil, nil, "ip", "-n", e.node, "link", "add", "svc0", "type", "veth", "peer", "name", "svc0peer"); err != nil {
		t.Fatal(err)
	}
	releases := e.mem.Calls("release")
	if _, err := e.Cnitool("add", cnitest.NsPath(podB), "pod-b", nil); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Fatalf("ADD with a veth named svc0: %v, want 'not a bridge'", err)
	}
	if e.mem.Addrs(attachment(podB)) != nil || e.mem.Calls("release") != releases+1 {
		t.Fatalf("failed ADD kept its address (%v) or did not release it once", e.mem.Addrs(attachment(podB)))
	}
	if cnitest.LinkIn(t, podB, "eth0") != nil {
		t.Fatal("failed ADD left eth0 in the pod")
	}
}

func TestOldSpecVersion(t *testing.T) {
	e := newEnv(t, dualStack())
	e.WriteConflist("0.4.0")
	pod := cnitest.NetnsAdd(t, "a")
	out, err := e.Cnitool("add", cnitest.NsPath(pod), "pod-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"cniVersion": "0.4.0"`) || !strings.Contains(out, `"version": "4"`) {
		t.Fatalf("0.4.0 ADD result = %s, want a 0.4.0 result with per-IP versions", out)
	}
	if out, err := e.Cnitool("check", cnitest.NsPath(pod), "pod-a", nil); err != nil {
		t.Fatalf("0.4.0 CHECK: %v (%s)", err, out)
	}
	if out, err := e.Cnitool("del", cnitest.NsPath(pod), "pod-a", nil); err != nil {
		t.Fatalf("0.4.0 DEL: %v (%s)", err, out)
	}
}

// Concurrent ADDs on a node without bridge: one creates it, all succeed with distinct
// addresses and reach each other; concurrent DELs free everything.
func TestConcurrentAdds(t *testing.T) {
	e := newEnv(t, podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: gw4}}})
	const n = 6
	pods := make([]string, n)
	for i := range pods {
		pods[i] = cnitest.NetnsAdd(t, fmt.Sprintf("p%d", i))
	}
	parallel := func(cmd string) {
		errs := make(chan error, n)
		for i, p := range pods {
			go func() {
				_, err := e.Cnitool(cmd, cnitest.NsPath(p), fmt.Sprintf("pod-%d", i), nil)
				errs <- err
			}()
		}
		for range pods {
			if err := <-errs; err != nil {
				t.Errorf("concurrent %s: %v", cmd, err)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	parallel("add")
	seen := map[netip.Addr]bool{}
	for _, p := range pods {
		a := e.mem.Addrs(attachment(p))
		if len(a) != 1 || seen[a[0]] {
			t.Fatalf("pod %s holds %v; addresses so far %v", p, a, seen)
		}
		seen[a[0]] = true
	}
	for i, p := range pods {
		cnitest.Ping(t, p, gw4)
		cnitest.Ping(t, p, e.mem.Addrs(attachment(pods[(i+1)%n]))[0])
	}
	parallel("del")
	if left := e.mem.Pods(); len(left) != 0 {
		t.Fatalf("after concurrent DELs the daemon holds %v", left)
	}
}
