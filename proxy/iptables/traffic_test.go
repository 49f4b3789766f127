package iptables

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// inNetns runs f on a locked OS thread switched into the named namespace. Sockets made by f
// stay in that namespace.
func inNetns(t *testing.T, name string, f func() error) error {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the original network namespace: " + err.Error())
		}
	}()
	return f()
}

// extraNetns makes another namespace with a unique name, removed at the end of the test.
func extraNetns(t *testing.T, prefix string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := prefix + "-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// link connects the node namespace (interface nodeIf) to other (otherIf) with a veth pair.
func link(t *testing.T, node NetnsRunner, other, nodeIf, otherIf string) {
	t.Helper()
	mustRun(t, node, "ip", "link", "add", nodeIf, "type", "veth", "peer", "name", otherIf, "netns", other)
	mustRun(t, node, "ip", "link", "set", nodeIf, "up")
	o := NetnsRunner{Name: other}
	mustRun(t, o, "ip", "link", "set", "lo", "up")
	mustRun(t, o, "ip", "link", "set", otherIf, "up")
}

// serve listens on :8080 in namespace ns and answers every connection with id and the
// remote address it sees.
func serve(t *testing.T, ns, id string) {
	t.Helper()
	var ln net.Listener
	if err := inNetns(t, ns, func() (err error) {
		ln, err = net.Listen("tcp4", ":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(id + " " + c.RemoteAddr().(*net.TCPAddr).IP.String() + "\n"))
			c.Close()
		}
	}()
}

// call connects from namespace ns to dst and returns the server's answer: "<pod> <client
// address it saw>".
func call(t *testing.T, ns, dst string, timeout time.Duration) (answer string, err error) {
	t.Helper()
	var c net.Conn
	if err := inNetns(t, ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", dst, timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestTrafficInNetns sends real connections through the rules: a node namespace holding the
// rules, two pod namespaces (routed veths) and a client namespace outside the cluster.
func TestTrafficInNetns(t *testing.T) {
	for _, flavour := range []string{"nft", "legacy"} {
		t.Run(flavour, func(t *testing.T) { testTraffic(t, flavour) })
	}
}

func testTraffic(t *testing.T, flavour string) {
	node := newNetns(t)
	pod1, pod2, client := extraNetns(t, "svcpx-p1"), extraNetns(t, "svcpx-p2"), extraNetns(t, "svcpx-cl")
	mustRun(t, node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	link(t, node, pod1, "vp1", "eth0")
	link(t, node, pod2, "vp2", "eth0")
	link(t, node, client, "vcl", "eth0")
	mustRun(t, node, "ip", "link", "del", "dummy0") // this test has its own underlay link
	for _, c := range [][]string{
		{"ip", "addr", "add", "10.244.1.1/32", "dev", "vp1"},
		{"ip", "addr", "add", "10.244.1.1/32", "dev", "vp2"},
		{"ip", "route", "add", "10.244.1.10/32", "dev", "vp1"},
		{"ip", "route", "add", "10.244.1.11/32", "dev", "vp2"},
		{"ip", "addr", "add", "172.31.0.3/24", "dev", "vcl"},
		// Like a real node: a default route (a VIP is not routed anywhere else).
		{"ip", "route", "add", "default", "via", "172.31.0.200", "dev", "vcl"},
	} {
		mustRun(t, node, c[0], c[1:]...)
	}
	for ns, ip := range map[string]string{pod1: "10.244.1.10", pod2: "10.244.1.11"} {
		r := NetnsRunner{Name: ns}
		mustRun(t, r, "ip", "addr", "add", ip+"/32", "dev", "eth0")
		mustRun(t, r, "ip", "route", "add", "10.244.1.1/32", "dev", "eth0")
		mustRun(t, r, "ip", "route", "add", "default", "via", "10.244.1.1", "dev", "eth0")
	}
	cl := NetnsRunner{Name: client}
	mustRun(t, cl, "ip", "addr", "add", "172.31.0.200/24", "dev", "eth0")
	mustRun(t, cl, "ip", "route", "add", "10.96.0.0/16", "via", "172.31.0.3")
	serve(t, pod1, "pod1")
	serve(t, pod2, "pod2")

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := New(ctx, Options{Runner: node, Backend: flavour})
	if err != nil {
		t.Fatal(err)
	}
	key := func(n string) model.ServiceKey { return model.ServiceKey{Namespace: "default", Name: n} }
	lbIP := netip.MustParseAddr("172.31.0.150")
	st := &model.State{
		NodeName:     "node1",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		Services: []*model.Service{
			{Key: key("web"), Type: model.ClusterIP, ClusterIPs: addrs("10.96.0.10"),
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
					ep("10.244.1.10", 8080, "node1"), ep("10.244.1.11", 8080, "node1")}}}},
			{Key: key("local"), Type: model.LoadBalancer, ClusterIPs: addrs("10.96.0.20"), ExternalTrafficPolicyLocal: true,
				LoadBalancerIPs: []netip.Addr{lbIP}, LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("172.31.0.0/25")},
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: []model.Endpoint{
					ep("10.244.1.10", 8080, "node1"), ep("10.244.2.20", 8080, "node2")}}}},
			{Key: key("empty"), Type: model.ClusterIP, ClusterIPs: addrs("10.96.0.30"),
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80}}},
		},
	}
	st.Sort()
	if _, err := b.Sync(ctx, st, model.Diff(nil, st), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Cleanup(context.Background()); err != nil {
			t.Error(err)
		}
	})
	mustRun(t, cl, "ip", "route", "add", lbIP.String()+"/32", "via", "172.31.0.3")

	// A client outside the cluster CIDR reaches both pods, masqueraded to the node's address
	// on the pods' links.
	seen := map[string]int{}
	for range 24 {
		a, err := call(t, client, "10.96.0.10:80", 2*time.Second)
		if err != nil {
			t.Fatalf("client -> VIP: %v", err)
		}
		seen[a]++
	}
	if len(seen) != 2 || seen["pod1 10.244.1.1"] == 0 || seen["pod2 10.244.1.1"] == 0 {
		t.Fatalf("client -> VIP: want both pods, masqueraded to 10.244.1.1; got %v", seen)
	}

	// Pod 2 through the VIP: reaching pod 1 keeps its address; reaching itself (hairpin) is
	// masqueraded.
	seen = map[string]int{}
	for range 24 {
		a, err := call(t, pod2, "10.96.0.10:80", 2*time.Second)
		if err != nil {
			t.Fatalf("pod2 -> VIP: %v", err)
		}
		seen[a]++
	}
	if len(seen) != 2 || seen["pod1 10.244.1.11"] == 0 || seen["pod2 10.244.1.1"] == 0 {
		t.Fatalf("pod2 -> VIP: want pod1 seeing 10.244.1.11 and pod2 (hairpin) seeing 10.244.1.1; got %v", seen)
	}

	// externalTrafficPolicy Local on the node port: only the local endpoint, client IP kept.
	for range 8 {
		a, err := call(t, client, "172.31.0.3:30080", 2*time.Second)
		if err != nil {
			t.Fatalf("client -> node port: %v", err)
		}
		if a != "pod1 172.31.0.200" {
			t.Fatalf("node port with Local policy: answer %q, want pod1 seeing the client's 172.31.0.200", a)
		}
	}

	// A service without endpoints is refused at once.
	if _, err := call(t, client, "10.96.0.30:80", 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("service without endpoints: %v, want connection refused", err)
	}

	// loadBalancerSourceRanges: 172.31.0.200 is outside 172.31.0.0/25, so dropped.
	if _, err := call(t, client, lbIP.String()+":80", 500*time.Millisecond); err == nil {
		t.Fatal("client outside loadBalancerSourceRanges reached the load balancer IP")
	}
	_, save, _ := b.Binaries()
	if n := tablePackets(t, node, save, "filter", ChainFirewall); n == 0 {
		t.Fatalf("the connection outside loadBalancerSourceRanges was not dropped by %s", ChainFirewall)
	}
	next := cloneState(st)
	next.Service(key("local")).LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("172.31.0.128/25")}
	if _, err := b.Sync(ctx, next, model.Diff(st, next), false); err != nil {
		t.Fatal(err)
	}
	a, err := call(t, client, lbIP.String()+":80", 2*time.Second)
	if err != nil || a != "pod1 172.31.0.200" {
		t.Fatalf("client inside loadBalancerSourceRanges: answer %q, %v", a, err)
	}
}
