package ebpf

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// nodeNet is an underlay 172.31.0.0/24 (a bridge in its own namespace) joining an outside
// client (.100), this node (.1, with pod 10.244.1.5 behind a veth) and a second node (.2,
// hosting pod 10.244.2.5 on itself). Servers on both pods answer "<local> from <remote>".
type nodeNet struct {
	client, node, node2, pod string
	nodeIf                   string
	podIf                    string // the node's interface toward the pod
}

func newNodeNet(t *testing.T) nodeNet {
	t.Helper()
	n := nodeNet{client: netnsAdd(t, "svcx-"), node: netnsAdd(t, "svcn-"), node2: netnsAdd(t, "svcm-"), pod: netnsAdd(t, "svcq-")}
	lan := netnsAdd(t, "svcl-")
	run(t, "ip", "-n", lan, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", lan, "link", "set", "br0", "up")
	plug := func(ns, addr string) string {
		in, out := randName("ve"), randName("vb")
		run(t, "ip", "link", "add", in, "netns", ns, "type", "veth", "peer", "name", out, "netns", lan)
		run(t, "ip", "-n", lan, "link", "set", out, "master", "br0", "up")
		run(t, "ip", "-n", ns, "addr", "add", addr, "dev", in)
		run(t, "ip", "-n", ns, "link", "set", in, "up")
		return in
	}
	plug(n.client, "172.31.0.100/24")
	n.nodeIf = plug(n.node, "172.31.0.1/24")
	plug(n.node2, "172.31.0.2/24")
	run(t, "ip", "-n", n.node2, "addr", "add", "10.244.2.5/32", "dev", "lo")

	vn, vp := randName("vn"), randName("vp")
	run(t, "ip", "link", "add", vn, "netns", n.node, "type", "veth", "peer", "name", vp, "netns", n.pod)
	n.podIf = vn
	run(t, "ip", "-n", n.node, "addr", "add", "10.244.1.1/24", "dev", vn)
	run(t, "ip", "-n", n.node, "link", "set", vn, "up")
	run(t, "ip", "-n", n.pod, "addr", "add", "10.244.1.5/24", "dev", vp)
	run(t, "ip", "-n", n.pod, "link", "set", vp, "up")
	run(t, "ip", "-n", n.pod, "route", "add", "default", "via", "10.244.1.1")
	run(t, "ip", "-n", n.node, "route", "add", "10.244.2.0/24", "via", "172.31.0.2")
	run(t, "ip", "netns", "exec", n.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	for _, srv := range []struct{ ns, addr string }{{n.pod, "10.244.1.5:8080"}, {n.node2, "10.244.2.5:8080"}} {
		var ln net.Listener
		var err error
		inNetns(t, srv.ns, func() { ln, err = net.Listen("tcp4", srv.addr) })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte(c.LocalAddr().String() + " from " + c.RemoteAddr().(*net.TCPAddr).IP.String() + "\n"))
				c.Close()
			}
		}()
	}
	return n
}

func dialFrom(t *testing.T, ns, addr string) (string, error) {
	t.Helper()
	var line string
	var err error
	inNetns(t, ns, func() {
		var c net.Conn
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
	})
	return strings.TrimSpace(line), err
}

// TestTCRealKernel sends real connections from a client outside the node to NodePorts
// handled by the TCX programs on the node's underlay interface.
func TestTCRealKernel(t *testing.T) {
	requireRoot(t)
	n := newNodeNet(t)
	eps := func(nodes ...string) []model.Endpoint {
		var out []model.Endpoint
		for _, node := range nodes {
			ip := map[string]string{"node1": "10.244.1.5", "node2": "10.244.2.5"}[node]
			out = append(out, model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Ready: true, Serving: true})
		}
		return out
	}
	svc := func(name, vip string, nodePort uint16, local bool, e []model.Endpoint) *model.Service {
		return &model.Service{
			Key: model.ServiceKey{Namespace: "default", Name: name}, Type: model.NodePort,
			ClusterIPs:                 []netip.Addr{netip.MustParseAddr(vip)},
			ExternalTrafficPolicyLocal: local,
			Ports:                      []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: nodePort, Endpoints: e}},
		}
	}
	st := testState(
		svc("local", "10.96.0.20", 30080, true, eps("node1", "node2")),
		svc("remote", "10.96.0.21", 30081, false, eps("node2")),
		svc("cluster", "10.96.0.22", 30082, false, eps("node1")),
		svc("none", "10.96.0.23", 30083, false, nil),
	)
	b, err := newTestBackendIn(t, n.node, Options{Interfaces: []string{n.nodeIf}, PodInterfaces: []string{n.podIf}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	inNetns(t, n.node, func() { _, err = b.Sync(context.Background(), st, model.Diff(nil, st), true) })
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}

	// externalTrafficPolicy Local: only the local endpoint, client address kept.
	for i := 0; i < 5; i++ {
		got, err := dialFrom(t, n.client, "172.31.0.1:30080")
		if err != nil || got != "10.244.1.5:8080 from 172.31.0.100" {
			t.Fatalf("NodePort with Local policy: %q, %v", got, err)
		}
	}
	// Cluster policy to a backend on another node: SNAT to the node so the reply returns.
	for i := 0; i < 3; i++ {
		got, err := dialFrom(t, n.client, "172.31.0.1:30081")
		if err != nil || got != "10.244.2.5:8080 from 172.31.0.1" {
			t.Fatalf("NodePort to a remote backend: %q, %v", got, err)
		}
	}
	// Cluster policy to a local backend, from outside clusterCIDR: masqueraded too (as
	// kube-proxy does); the reply comes back through the pod interface and is sent out there.
	for i := 0; i < 3; i++ {
		got, err := dialFrom(t, n.client, "172.31.0.1:30082")
		if err != nil || got != "10.244.1.5:8080 from 172.31.0.1" {
			t.Fatalf("NodePort to a local backend: %q, %v", got, err)
		}
	}
	// A ClusterIP reached by a client that routes the service range via the node.
	run(t, "ip", "-n", n.client, "route", "add", "10.96.0.0/16", "via", "172.31.0.1")
	for _, vip := range []string{"10.96.0.22:80", "10.96.0.21:80"} {
		got, err := dialFrom(t, n.client, vip)
		if err != nil || !strings.HasSuffix(got, " from 172.31.0.1") {
			t.Fatalf("ClusterIP %s from outside: %q, %v (want an answer to the masqueraded node address)", vip, got, err)
		}
	}
	// A NodePort without endpoints is refused at once (the stack answers with a RST), and so
	// is the ClusterIP (the tc program answers with a RST of its own).
	for _, addr := range []string{"172.31.0.1:30083", "10.96.0.23:80"} {
		if _, err := dialFrom(t, n.client, addr); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("%s without endpoints: %v, want connection refused", addr, err)
		}
	}
	if ok, err := b.Verify(context.Background()); err != nil || !ok {
		t.Errorf("Verify = %v, %v", ok, err)
	}
}

// TestPodInterfaceAttachedLater: the pod bridge may not exist when the daemon starts (the CNI
// plugin makes it with the first pod). New then succeeds; once the bridge appears, Verify
// reports it (forcing a full sync) and the very next sync, partial or full, attaches the pod
// program to it (on the real-node bench, NodePort traffic to local backends failed until the
// next full sync did); a bridge deleted and made again is attached again; a restarted
// backend reuses the pinned link.
func TestPodInterfaceAttachedLater(t *testing.T) {
	requireRoot(t)
	ns := netnsAdd(t, "svcb-")
	br := randName("br")
	pin := privateBPFFS(t)
	opts := Options{PinPath: pin, PodInterfaces: []string{br}}
	b, err := newTestBackendIn(t, ns, opts)
	if err != nil {
		t.Fatalf("New without the pod interface: %v", err)
	}
	if _, ok := b.links[linkTCXPod+br]; ok {
		t.Fatal("a link for a missing interface")
	}
	st := testState(webService())
	inNetns(t, ns, func() { _, err = b.Sync(context.Background(), st, model.Diff(nil, st), true) })
	if err != nil {
		t.Fatalf("first Sync: %v", err)
	}
	verify := func() (ok bool) {
		inNetns(t, ns, func() { ok, err = b.Verify(context.Background()) })
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		return ok
	}
	if !verify() {
		t.Fatal("Verify failed before the pod interface exists")
	}
	run(t, "ip", "-n", ns, "link", "add", br, "type", "bridge")
	if verify() {
		t.Fatal("Verify does not report the pod interface that appeared")
	}
	partial := func() {
		other := webService()
		other.Key.Name = "other"
		other.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.11")}
		st2 := testState(webService(), other)
		inNetns(t, ns, func() { _, err = b.Sync(context.Background(), st2, model.Diff(st, st2), false) })
		if err != nil {
			t.Fatalf("partial Sync: %v", err)
		}
		st = st2
	}
	partial()
	l, ok := b.links[linkTCXPod+br]
	if !ok {
		t.Fatal("a partial sync did not attach the pod interface that appeared")
	}
	if !verify() {
		t.Fatal("Verify failed once the pod interface is attached")
	}
	// The bridge deleted and made again (a node reboot): attached again.
	run(t, "ip", "-n", ns, "link", "del", br)
	run(t, "ip", "-n", ns, "link", "add", br, "type", "bridge")
	if verify() {
		t.Fatal("Verify does not report the pod link detached from its deleted bridge")
	}
	inNetns(t, ns, func() { _, err = b.Sync(context.Background(), st, model.Changes{}, true) })
	if err != nil {
		t.Fatalf("full Sync: %v", err)
	}
	if l, ok = b.links[linkTCXPod+br]; !ok {
		t.Fatal("no pod link after the bridge came back")
	}
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	var idx int
	inNetns(t, ns, func() {
		ifc, ierr := net.InterfaceByName(br)
		if ierr == nil {
			idx = ifc.Index
		}
	})
	if tcx := info.TCX(); tcx == nil || int(tcx.Ifindex) != idx {
		t.Fatalf("pod link attached to %+v, want ifindex %d", info.TCX(), idx)
	}
	if ok, err := b.Verify(context.Background()); err != nil || !ok {
		t.Fatalf("Verify = %v, %v", ok, err)
	}
	// A restart (Close, New) reuses the pinned link instead of attaching a second one.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b2, err := newTestBackendIn(t, ns, opts)
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	info2, err := b2.links[linkTCXPod+br].Info()
	if err != nil || info2.ID != info.ID {
		t.Fatalf("restart: pod link %v (err %v), want the pinned link %d reused", info2, err, info.ID)
	}
}
