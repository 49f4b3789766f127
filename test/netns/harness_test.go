package netns

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHarnessTopology checks the harness itself, without svcproxy: pods reach each other and
// the node, the external client reaches the node, servers answer TCP, UDP and HTTP with their
// pod name and the peer they saw, and Sandbox.Close leaves nothing behind.
func TestHarnessTopology(t *testing.T) {
	s := newSandbox(t, Options{
		Pods:     []PodSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "client"}},
		External: true,
		Cgroup:   true,
	})
	ctx := context.Background()
	a, b, client := s.Pod("pod-a"), s.Pod("pod-b"), s.Pod("client")
	for _, p := range []*Pod{a, b} {
		if _, err := s.StartServer(ctx, p, ServeSpec{TCP: []uint16{8080}, UDP: []uint16{5353}, HTTP: []uint16{8081}}); err != nil {
			t.Fatal(err)
		}
	}
	// The node answers on the underlay too, for the external client.
	if _, err := s.Start(ctx, ProcSpec{Name: "server-node", NS: s.Node, Argv: []string{s.PodServer, "serve", "--name", "node", "--tcp", ":7000"}, ReadyLine: "ready"}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		from     *Namespace
		spec     ProbeSpec
		wantPod  string
		wantPeer string
	}{
		{"client->pod-a tcp", &client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 8080), Count: 20}, "pod-a", client.IP.String()},
		{"client->pod-b udp", &client.Namespace, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(b.IP, 5353), Count: 20}, "pod-b", client.IP.String()},
		{"client->pod-a http", &client.Namespace, ProbeSpec{Proto: HTTP, Addr: netip.AddrPortFrom(a.IP, 8081), Count: 5}, "pod-a", client.IP.String()},
		{"pod-a->pod-b tcp", &a.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(b.IP, 8080), Count: 5}, "pod-b", a.IP.String()},
		{"pod-b->pod-a udp", &b.Namespace, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(a.IP, 5353), Count: 5}, "pod-a", b.IP.String()},
		{"node->pod-a tcp", s.Node, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 8080), Count: 5}, "pod-a", Gateway.String()},
		{"external->node tcp", s.External, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(NodeUnderlayIP, 7000), Count: 5}, "node", ExternalClientIP.String()},
		{"pod-a->node underlay tcp", &a.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(NodeUnderlayIP, 7000), Count: 5}, "node", a.IP.String()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := s.Probe(ctx, c.from, c.spec)
			if err != nil {
				t.Fatal(err)
			}
			if res.Replies[c.wantPod] != c.spec.Count || res.Failed() != 0 {
				t.Errorf("want %d replies from %s, got %v", c.spec.Count, c.wantPod, res)
			}
			if res.Peers[c.wantPeer] != c.spec.Count {
				t.Errorf("want the server to see peer %s on every connection, got %v", c.wantPeer, res.Peers)
			}
		})
	}

	// The external client has no route into the pod network: only the service range goes via
	// the node. A direct connection to a pod must not work.
	t.Run("external->pod has no route", func(t *testing.T) {
		res, err := s.Probe(ctx, s.External, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 8080), Count: 1, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.OK() != 0 {
			t.Errorf("external client reached a pod directly: %v", res)
		}
	})

	// Hairpin is on for every bridge port, as a pod reaching itself through a VIP needs.
	for _, p := range s.Pods() {
		out, err := run(ctx, "ip", "-n", s.Node.Name, "-d", "link", "show", p.HostIf)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "hairpin on") {
			t.Errorf("bridge port %s of %s: hairpin not on:\n%s", p.HostIf, p.PodName, out)
		}
	}
	// Forwarding is on in the node namespace only.
	out, err := run(ctx, "ip", "netns", "exec", s.Node.Name, "sysctl", "-n", "net.ipv4.ip_forward")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Errorf("node ip_forward = %q (%v), want 1", out, err)
	}
	out, err = run(ctx, "ip", "netns", "exec", client.Name, "sysctl", "-n", "net.ipv4.ip_forward")
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("pod ip_forward = %q (%v), want 0", out, err)
	}
}

// TestHarnessFailureKinds checks that probes tell a refused connection from a timeout and from
// an unreachable network, for TCP and UDP.
func TestHarnessFailureKinds(t *testing.T) {
	s := newSandbox(t, Options{Pods: []PodSpec{{Name: "pod-a"}, {Name: "client"}}})
	ctx := context.Background()
	a, client := s.Pod("pod-a"), s.Pod("client")
	if _, err := s.StartServer(ctx, a, ServeSpec{TCP: []uint16{8080}}); err != nil {
		t.Fatal(err)
	}
	// In pod-a, drop what arrives on port 9999 so a connection there times out; in the client,
	// make one network unreachable. Both namespaces are the sandbox's own.
	if err := runAll(ctx,
		[]string{"ip", "netns", "exec", a.Name, "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9999", "-j", "DROP"},
		[]string{"ip", "netns", "exec", a.Name, "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "DROP"},
		[]string{"ip", "-n", client.Name, "route", "add", "unreachable", "10.96.200.0/24"},
		[]string{"ip", "netns", "exec", client.Name, "iptables", "-w", "-A", "OUTPUT", "-p", "udp", "--dport", "9998", "-j", "REJECT"},
	); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		spec  ProbeSpec
		check func(ProbeResult) bool
	}{
		{"tcp closed port is refused", ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 8081), Count: 3}, func(r ProbeResult) bool { return r.Refused == 3 }},
		{"udp closed port is refused", ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(a.IP, 8081), Count: 3}, func(r ProbeResult) bool { return r.Refused == 3 }},
		{"tcp dropped port times out", ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 9999), Count: 2, Timeout: 500 * time.Millisecond}, func(r ProbeResult) bool { return r.Timeout == 2 }},
		{"udp dropped port times out", ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(a.IP, 9999), Count: 2, Timeout: 500 * time.Millisecond}, func(r ProbeResult) bool { return r.Timeout == 2 }},
		{"udp rejected in the sender's OUTPUT", ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(a.IP, 9998), Count: 2}, func(r ProbeResult) bool { return r.Rejected == 2 }},
		{"unreachable route", ProbeSpec{Proto: TCP, Addr: netip.MustParseAddrPort("10.96.200.1:80"), Count: 2}, func(r ProbeResult) bool { return r.Unreachable == 2 }},
		{"probe gives up after MaxFailures", ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 9999), Count: 10, Parallel: 1, MaxFailures: 2, Timeout: 300 * time.Millisecond}, func(r ProbeResult) bool { return r.Timeout == 2 && r.Skipped == 8 }},
		{"open port answers", ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(a.IP, 8080), Count: 3}, func(r ProbeResult) bool { return r.Replies["pod-a"] == 3 && r.Failed() == 0 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := s.Probe(ctx, &client.Namespace, c.spec)
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(res) {
				t.Errorf("unexpected outcome: %v (sequence %v)", res, res.Sequence)
			}
		})
	}
}

// TestHarnessCloseRemovesEverything builds and closes a sandbox and checks that its
// namespaces, cgroup and processes are gone.
func TestHarnessCloseRemovesEverything(t *testing.T) {
	RequireRoot(t)
	ctx := context.Background()
	s, err := New(ctx, Options{Pods: []PodSpec{{Name: "pod-a"}}, External: true, Cgroup: true, BPFFS: true, PodServer: bins.podServer, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			s.Close()
		}
	})
	p, err := s.StartServer(ctx, s.Pod("pod-a"), ServeSpec{TCP: []uint16{8080}})
	if err != nil {
		t.Fatal(err)
	}
	cg := s.Cgroup
	if cg == "" {
		t.Fatal("no cgroup made")
	}
	if b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs")); err != nil || len(strings.TrimSpace(string(b))) == 0 {
		t.Errorf("server is not in the sandbox cgroup: %q %v", b, err)
	}
	bpffs := s.BPFFS
	if !isMounted(t, bpffs) {
		t.Errorf("bpffs not mounted at %s", bpffs)
	}
	closed = true
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Errorf("server pid %d still running", p.PID())
	}
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), s.ID) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Errorf("cgroup %s left behind (%v)", cg, err)
	}
	if isMounted(t, bpffs) {
		t.Errorf("bpffs still mounted at %s", bpffs)
	}
}

func isMounted(t *testing.T, dir string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[1] == dir {
			return true
		}
	}
	return false
}
