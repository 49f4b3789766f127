package ebpf

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// dialFromPort connects from network namespace ns to addr, from local (nil: a port the
// kernel picks), and returns the server's line and the local address used.
func dialFromPort(t *testing.T, ns string, local *net.TCPAddr, addr string, timeout time.Duration) (line string, from net.Addr, err error) {
	t.Helper()
	inNetns(t, ns, func() {
		d := net.Dialer{Timeout: timeout}
		if local != nil {
			d.LocalAddr = local
		}
		var c net.Conn
		c, err = d.Dial("tcp4", addr)
		if err != nil {
			return
		}
		defer c.Close()
		from = c.LocalAddr()
		_ = c.SetDeadline(time.Now().Add(timeout))
		r := bufio.NewReader(c)
		if line, err = r.ReadString('\n'); err != nil {
			return
		}
		// Wait for the server's close, so this side does not end in TIME_WAIT (which would
		// keep the port from the next connection to the same server).
		_, _ = io.Copy(io.Discard, r)
	})
	return strings.TrimSpace(line), from, err
}

// TestTCSNATPortsAvoidLocalPorts reproduces the bug of the real-node bench: outside clients
// reach a NodePort whose backend runs on another node, so their flows are masqueraded to the
// node's address; a process on the node then connects straight to that backend and the
// kernel happens to give its socket a port one of those flows uses as SNAT port. When SNAT
// ports could be ports the node's sockets use, the backend's SYN-ACK matched the flow's
// reverse conntrack entry on the node's interface and was sent to the outside client: the
// local connection hung in SYN-SENT. SNAT ports now come from outside ip_local_port_range.
//
// To make the collision certain rather than a matter of luck, the node's ip_local_port_range
// is narrowed to ten ports and the outside client uses exactly those ten as source ports
// (the old code kept a client's port as SNAT port when it was free). The control case gives
// the backend that same range as SNATPorts, the old behaviour, and checks that the harness
// does see the local connections hijacked.
func TestTCSNATPortsAvoidLocalPorts(t *testing.T) {
	requireRoot(t)
	localRange := PortRange{Min: 40000, Max: 40009}
	remoteNP := "172.31.0.1:30081"
	setup := func(t *testing.T, opts Options) (nodeNet, *Backend) {
		n := newNodeNet(t)
		run(t, "ip", "netns", "exec", n.node, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009")
		opts.Interfaces, opts.PodInterfaces = []string{n.nodeIf}, []string{n.podIf}
		b, err := newTestBackendIn(t, n.node, opts)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		st := testState(&model.Service{
			Key: model.ServiceKey{Namespace: "default", Name: "remote"}, Type: model.NodePort,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.21")},
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30081, Endpoints: []model.Endpoint{
				{IP: netip.MustParseAddr("10.244.2.5"), Port: 8080, NodeName: "node2", Ready: true, Serving: true},
			}}},
		})
		inNetns(t, n.node, func() { _, err = b.Sync(context.Background(), st, model.Diff(nil, st), true) })
		if err != nil {
			t.Fatalf("Sync: %v", err)
		}
		// Outside flows from every port of the node's local range, masqueraded to the
		// remote backend. Each reverse entry stays valid for the closing timeout (10 s)
		// after the flow ended, far longer than the rest of the test.
		for p := localRange.Min; p <= localRange.Max; p++ {
			got, _, err := dialFromPort(t, n.client, &net.TCPAddr{IP: net.IPv4(172, 31, 0, 100), Port: int(p)}, remoteNP, 5*time.Second)
			if err != nil || got != "10.244.2.5:8080 from 172.31.0.1" {
				t.Fatalf("NodePort to the remote backend from port %d: %q, %v", p, got, err)
			}
		}
		return n, b
	}
	snatPorts := func(t *testing.T, b *Backend) []uint16 {
		var ports []uint16
		for k, v := range ctEntries(t, b) {
			if v.Kind == ctReply && v.Snat == 1 && k.Saddr == addrToBE(netip.MustParseAddr("10.244.2.5")) {
				ports = append(ports, ntohs(k.Dport))
			}
		}
		if len(ports) != localRange.Size() {
			t.Fatalf("%d masqueraded flows in svc_ct, want %d", len(ports), localRange.Size())
		}
		return ports
	}

	// localDials connects from the node straight to the backend, once from the first outside
	// client's port bound explicitly, then kernelPicked times from a port the kernel picks
	// (one of the ten of the narrowed range, each an SNAT port of the old code). It returns
	// how many connections failed, and why.
	localDials := func(t *testing.T, n nodeNet, kernelPicked int, timeout time.Duration) (failed int, errs []string) {
		dial := func(local *net.TCPAddr) {
			got, from, err := dialFromPort(t, n.node, local, "10.244.2.5:8080", timeout)
			if err == nil && got != "10.244.2.5:8080 from 172.31.0.1" {
				err = errors.New("answer " + got)
			}
			if err != nil {
				failed++
				errs = append(errs, err.Error())
				return
			}
			if p := from.(*net.TCPAddr).Port; !localRange.Contains(uint16(p)) {
				t.Fatalf("local connection from port %d, outside the node's ip_local_port_range %v: the test does not test what it means to", p, localRange)
			}
		}
		// The bound one first: a kernel-picked port may be left in TIME_WAIT.
		dial(&net.TCPAddr{IP: net.IPv4(172, 31, 0, 1), Port: int(localRange.Min)})
		for i := 0; i < kernelPicked; i++ {
			dial(nil)
		}
		return failed, errs
	}

	t.Run("fixed", func(t *testing.T) {
		n, b := setup(t, Options{})
		if want := (PortRange{Min: 40010, Max: 65535}); b.snatPorts != want {
			t.Fatalf("SNAT ports %v, want %v (above the node's ip_local_port_range %v)", b.snatPorts, want, localRange)
		}
		for _, p := range snatPorts(t, b) {
			if localRange.Contains(p) || !b.snatPorts.Contains(p) {
				t.Errorf("SNAT port %d: inside the node's local port range %v or outside %v", p, localRange, b.snatPorts)
			}
		}
		if failed, errs := localDials(t, n, 2*localRange.Size(), 3*time.Second); failed != 0 {
			t.Fatalf("%d local connections to the backend failed (their SYN-ACK taken for a masqueraded flow's?): %v", failed, errs)
		}
	})

	// Control: SNAT ports overlapping the local range, as before the fix. Every local
	// connection collides with a masqueraded flow and never gets its SYN-ACK.
	t.Run("overlapping range hangs", func(t *testing.T) {
		n, b := setup(t, Options{SNATPorts: localRange})
		for _, p := range snatPorts(t, b) {
			if !localRange.Contains(p) {
				t.Fatalf("SNAT port %d outside the configured %v", p, localRange)
			}
		}
		failed, errs := localDials(t, n, 1, 1500*time.Millisecond)
		if failed != 2 {
			t.Fatalf("%d of 2 local connections failed with SNAT ports in the local range, want both (the harness does not reproduce the hijack): %v", failed, errs)
		}
		for _, e := range errs {
			if !strings.Contains(e, "timeout") {
				t.Errorf("local connection failed with %q, want a timeout (SYN-ACK hijacked)", e)
			}
		}
	})
}
