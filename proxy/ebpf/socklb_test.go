package ebpf

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// podNet is a client namespace and a pod namespace joined by a veth pair:
// client 10.244.1.10/24, pod 10.244.1.5/24 and 10.244.1.6/24. Servers in the pod namespace:
// TCP 8080 on both pod addresses answers "pod <local address>"; UDP 5353 on both echoes
// "echo <local address>".
type podNet struct {
	client, pod string
}

func newPodNet(t *testing.T) podNet {
	t.Helper()
	n := podNet{client: netnsAdd(t, "svcc-"), pod: netnsAdd(t, "svcp-")}
	vc, vp := randName("vc"), randName("vp")
	run(t, "ip", "link", "add", vc, "netns", n.client, "type", "veth", "peer", "name", vp, "netns", n.pod)
	run(t, "ip", "-n", n.client, "addr", "add", "10.244.1.10/24", "dev", vc)
	run(t, "ip", "-n", n.pod, "addr", "add", "10.244.1.5/24", "dev", vp)
	run(t, "ip", "-n", n.pod, "addr", "add", "10.244.1.6/24", "dev", vp)
	run(t, "ip", "-n", n.client, "link", "set", vc, "up")
	run(t, "ip", "-n", n.pod, "link", "set", vp, "up")
	for _, ip := range []string{"10.244.1.5", "10.244.1.6"} {
		var ln net.Listener
		var pc net.PacketConn
		var err1, err2 error
		inNetns(t, n.pod, func() {
			ln, err1 = net.Listen("tcp4", ip+":8080")
			pc, err2 = net.ListenPacket("udp4", ip+":5353")
		})
		if err1 != nil || err2 != nil {
			t.Fatalf("pod servers: %v %v", err1, err2)
		}
		t.Cleanup(func() { ln.Close(); pc.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("pod " + c.LocalAddr().String() + "\n"))
				c.Close()
			}
		}()
		go func() {
			buf := make([]byte, 512)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte("echo "+pc.LocalAddr().String()), from)
			}
		}()
	}
	return n
}

func socketLBState(udpBackend string) *model.State {
	web := &model.Service{
		Key:         model.ServiceKey{Namespace: "default", Name: "web"},
		Type:        model.NodePort,
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		ExternalIPs: []netip.Addr{netip.MustParseAddr("172.31.0.60")},
		Ports: []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: []model.Endpoint{
			{IP: netip.MustParseAddr("10.244.1.5"), Port: 8080, NodeName: "node1", Ready: true, Serving: true},
		}}},
	}
	dns := &model.Service{
		Key:        model.ServiceKey{Namespace: "default", Name: "dns"},
		Type:       model.ClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.53")},
		Ports: []model.ServicePort{{Name: "dns", Protocol: model.UDP, Port: 53, Endpoints: []model.Endpoint{
			{IP: netip.MustParseAddr(udpBackend), Port: 5353, NodeName: "node1", Ready: true, Serving: true},
		}}},
	}
	empty := &model.Service{
		Key:        model.ServiceKey{Namespace: "default", Name: "empty"},
		Type:       model.ClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.11")},
		Ports:      []model.ServicePort{{Protocol: model.TCP, Port: 80}, {Name: "u", Protocol: model.UDP, Port: 53}},
	}
	return testState(web, dns, empty)
}

// TestSocketLBRealKernel attaches the socket hooks to a cgroup made by the test and runs
// clients inside it and inside a network namespace: TCP and UDP reach pods through VIPs,
// the VIP shows as peer and as UDP reply source, a service without endpoints refuses at once,
// connected UDP sockets to a removed backend are destroyed, and the data path keeps working
// after the Backend is closed (daemon stopped) and is reused by a new Backend.
func TestSocketLBRealKernel(t *testing.T) {
	requireRoot(t)
	cg := testCgroup(t)
	n := newPodNet(t)
	pin := privateBPFFS(t)
	b := newTestBackend(t, Options{CgroupPath: cg, PinPath: pin})
	st := socketLBState("10.244.1.5")
	mustSync(t, b, nil, st)

	r := runHelper(t, cg, n.client, "tcp 10.96.0.10:80")
	if r.Err != "" || r.Data != "pod 10.244.1.5:8080" {
		t.Fatalf("TCP through VIP: %+v", r)
	}
	if r.Remote != "10.96.0.10:80" {
		t.Errorf("getpeername shows %s, want the VIP 10.96.0.10:80", r.Remote)
	}

	// NodePort on a node address and an externalIP, from a client on the node.
	for _, fe := range []string{"172.31.0.1:30080", "172.31.0.60:80"} {
		r = runHelper(t, cg, n.client, "tcp "+fe)
		if r.Err != "" || r.Data != "pod 10.244.1.5:8080" || r.Remote != fe {
			t.Fatalf("TCP through %s: %+v", fe, r)
		}
	}

	r = runHelper(t, cg, n.client, "udp 10.96.0.53:53")
	if r.Err != "" || r.Data != "echo 10.244.1.5:5353" {
		t.Fatalf("UDP through VIP: %+v", r)
	}
	if r.Remote != "10.96.0.53:53" {
		t.Errorf("UDP reply came from %s, want the VIP 10.96.0.53:53", r.Remote)
	}

	for _, c := range []string{"tcp 10.96.0.11:80", "udp 10.96.0.11:53"} {
		r = runHelper(t, cg, n.client, c)
		if !r.Refused {
			t.Errorf("%s to a service without endpoints: %+v, want ECONNREFUSED", c, r)
		}
	}

	// Connected UDP: the backend is replaced; the socket pinned to the old one is destroyed.
	h := startHelper(t, cg, n.client, "udp-connected 10.96.0.53:53")
	r = h.next(t)
	if r.Stage != "ready" || r.Data != "echo 10.244.1.5:5353" || r.Remote != "10.96.0.53:53" {
		t.Fatalf("connected UDP: %+v", r)
	}
	st2 := socketLBState("10.244.1.6")
	mustSync(t, b, st, st2)
	if _, err := h.stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	r = h.next(t)
	if !r.Aborted {
		t.Fatalf("connected UDP socket to the removed backend: %+v, want ECONNABORTED (destroyed)", r)
	}
	r = runHelper(t, cg, n.client, "udp 10.96.0.53:53")
	if r.Data != "echo 10.244.1.6:5353" || r.Remote != "10.96.0.53:53" {
		t.Fatalf("UDP after backend change: %+v", r)
	}

	// A client outside the cgroup is not translated (only our cgroup has the hooks).
	var dialErr error
	inNetns(t, n.client, func() {
		var c net.Conn
		c, dialErr = net.DialTimeout("tcp4", "10.96.0.10:80", 2*time.Second)
		if c != nil {
			c.Close()
		}
	})
	if dialErr == nil {
		t.Errorf("a process outside the test cgroup reached the VIP: the hooks leak")
	}

	// Daemon stops: pinned links and maps keep the data path up.
	linkIDs := map[string]uint32{}
	for name, l := range b.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		linkIDs[name] = uint32(info.ID)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	r = runHelper(t, cg, n.client, "tcp 10.96.0.10:80")
	if r.Data != "pod 10.244.1.5:8080" {
		t.Fatalf("TCP through VIP while the daemon is stopped: %+v", r)
	}

	// Restart: the same links are reused and the first (full) sync finds nothing to write.
	b2 := newTestBackend(t, Options{CgroupPath: cg, PinPath: pin})
	for name, l := range b2.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		if uint32(info.ID) != linkIDs[name] {
			t.Errorf("link %s was recreated (id %d, was %d) instead of reused", name, info.ID, linkIDs[name])
		}
	}
	res, err := b2.Sync(context.Background(), st2, model.Diff(nil, st2), true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Objects != 0 {
		t.Errorf("first sync after restart wrote %d objects, want 0 (state was already there)", res.Objects)
	}
	if ok, err := b2.Verify(context.Background()); err != nil || !ok {
		t.Errorf("Verify after restart = %v, %v", ok, err)
	}
	r = runHelper(t, cg, n.client, "tcp 10.96.0.10:80")
	if r.Data != "pod 10.244.1.5:8080" {
		t.Fatalf("TCP through VIP after restart: %+v", r)
	}
}
