package ebpf

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// Verdicts of lb_select and tc return codes, as in the C sources.
const (
	lbNone      = 0
	lbOK        = 1
	lbNoBackend = 2
	tcActOK     = 0
	tcActShot   = 2
	tcActUnspec = 0xffffffff
	tcActRedir  = 7
)

// selectOnce runs the shared selection code (svc_test_select) for one request.
func selectOnce(t *testing.T, b *Backend, vip netip.AddrPort, proto, scope uint8, client uint64) svcbpf.SvcLbReq {
	t.Helper()
	req := svcbpf.SvcLbReq{Addr: addrToBE(vip.Addr()), Port: htons(vip.Port()), Proto: proto, Scope: scope, Client: client}
	var out svcbpf.SvcLbReq
	if _, err := b.testSelect.Run(&ebpf.RunOptions{Context: req, ContextOut: &out}); err != nil {
		t.Fatalf("test run: %v", err)
	}
	return out
}

func backendOf(r svcbpf.SvcLbReq) netip.AddrPort {
	return netip.AddrPortFrom(addrFromBE(r.BeAddr), ntohs(r.BePort))
}

var vip = netip.MustParseAddrPort("10.96.0.10:80")

func TestSelectSkipsTerminatingAndRefusesEmpty(t *testing.T) {
	b := newTestBackend(t, Options{})
	web := webService(ep("10.244.1.5", "node1", true, true, false), ep("10.244.1.6", "node2", true, true, false), ep("10.244.1.7", "node1", false, true, true))
	empty := webService()
	empty.Key.Name = "empty"
	empty.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.11")}
	st := testState(web, empty)
	mustSync(t, b, nil, st)

	var head svcValue
	if err := b.objs.SvcServices.Lookup(svcKey{Addr: addrToBE(vip.Addr()), Port: htons(80), Proto: protoTCP, Scope: ScopeInt}, &head); err != nil {
		t.Fatal(err)
	}
	if head.Count != 2 || head.Qcount != 1 {
		t.Fatalf("slot 0 = count %d qcount %d, want 2 and 1", head.Count, head.Qcount)
	}
	seen := map[netip.AddrPort]int{}
	for i := 0; i < 400; i++ {
		r := selectOnce(t, b, vip, protoTCP, ScopeInt, uint64(i))
		if r.Verdict != lbOK {
			t.Fatalf("verdict %d", r.Verdict)
		}
		seen[backendOf(r)]++
	}
	if len(seen) != 2 || seen[netip.MustParseAddrPort("10.244.1.7:8080")] != 0 {
		t.Fatalf("picked %v: want both ready endpoints and never the terminating one", seen)
	}
	if r := selectOnce(t, b, netip.MustParseAddrPort("10.96.0.11:80"), protoTCP, ScopeInt, 1); r.Verdict != lbNoBackend {
		t.Errorf("service without endpoints: verdict %d, want refuse", r.Verdict)
	}
	if r := selectOnce(t, b, netip.MustParseAddrPort("10.96.0.12:80"), protoTCP, ScopeInt, 1); r.Verdict != lbNone {
		t.Errorf("not a service: verdict %d", r.Verdict)
	}
	if r := selectOnce(t, b, vip, protoUDP, ScopeInt, 1); r.Verdict != lbNone {
		t.Errorf("wrong protocol matched: verdict %d", r.Verdict)
	}

	// Every ready endpoint goes away: the terminating one takes new flows (fallback).
	st2 := testState(webService(ep("10.244.1.7", "node1", false, true, true)), empty)
	mustSync(t, b, st, st2)
	for i := 0; i < 20; i++ {
		r := selectOnce(t, b, vip, protoTCP, ScopeInt, uint64(i))
		if r.Verdict != lbOK || backendOf(r) != netip.MustParseAddrPort("10.244.1.7:8080") {
			t.Fatalf("fallback: verdict %d backend %v", r.Verdict, backendOf(r))
		}
	}
	// Partial sync wrote only what changed, and left no stray slots or backends.
	e, err := b.readMaps()
	if err != nil {
		t.Fatal(err)
	}
	// web: 2 scopes x (head + 1 slot); empty: 2 scopes x head.
	if len(e.Backends) != 1 || len(e.Services) != 6 {
		t.Errorf("after shrink: %d backends, %d service entries; want 1 and 6", len(e.Backends), len(e.Services))
	}
}

func TestSelectAffinity(t *testing.T) {
	b := newTestBackend(t, Options{})
	s := webService(ep("10.244.1.2", "node1", true, true, false), ep("10.244.1.3", "node1", true, true, false),
		ep("10.244.1.4", "node1", true, true, false), ep("10.244.1.5", "node1", true, true, false))
	s.AffinityTimeout = time.Hour
	mustSync(t, b, nil, testState(s))
	perClient := map[uint64]netip.AddrPort{}
	distinct := map[netip.AddrPort]bool{}
	for round := 0; round < 10; round++ {
		for c := uint64(1); c <= 40; c++ {
			be := backendOf(selectOnce(t, b, vip, protoTCP, ScopeInt, c))
			if prev, ok := perClient[c]; ok && prev != be {
				t.Fatalf("client %d moved from %v to %v despite affinity", c, prev, be)
			}
			perClient[c] = be
			distinct[be] = true
		}
	}
	if len(distinct) < 2 {
		t.Errorf("40 clients all landed on %v: affinity must not pin every client to one backend", distinct)
	}
}

func runTC(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	opts := ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatalf("tc test run: %v", err)
	}
	return ret, opts.DataOut
}

func nodePortService(local bool, eps ...model.Endpoint) *model.Service {
	s := webService(eps...)
	s.Type = model.NodePort
	s.Ports[0].NodePort = 30080
	s.ExternalTrafficPolicyLocal = local
	return s
}

var (
	client   = netip.MustParseAddrPort("172.31.0.100:40000")
	nodePort = netip.MustParseAddrPort("172.31.0.1:30080")
)

func TestTCNodePortLocalKeepsClient(t *testing.T) {
	b := newTestBackend(t, Options{})
	s := nodePortService(true, ep("10.244.1.5", "node1", true, true, false), ep("10.244.2.5", "node2", true, true, false))
	udp := s.Ports[0]
	udp.Name, udp.Protocol = "udp", model.UDP
	s.Ports = append(s.Ports, udp)
	mustSync(t, b, nil, testState(s))
	local := netip.MustParseAddrPort("10.244.1.5:8080")

	for _, proto := range []uint8{protoTCP, protoUDP} {
		ret, out := runTC(t, b.objs.SvcTcIngress, packet(proto, client, nodePort, []byte("hello")))
		if ret != tcActOK {
			t.Fatalf("proto %d: ingress verdict %d", proto, ret)
		}
		src, dst := tuple(t, out)
		if src != client || dst != local {
			t.Fatalf("proto %d: ingress rewrote to %v -> %v, want %v -> %v (Local: client kept, local endpoint only)", proto, src, dst, client, local)
		}
		// The reply leaves through the external interface: reverse NAT restores the NodePort.
		ret, out = runTC(t, b.objs.SvcTcEgress, packet(proto, local, client, []byte("world")))
		if ret != tcActOK {
			t.Fatalf("proto %d: egress verdict %d", proto, ret)
		}
		src, dst = tuple(t, out)
		if src != nodePort || dst != client {
			t.Fatalf("proto %d: reply %v -> %v, want %v -> %v", proto, src, dst, nodePort, client)
		}
	}
	// Traffic not for a service passes untouched.
	if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, netip.MustParseAddrPort("172.31.0.1:22"), nil)); ret != tcActUnspec {
		t.Errorf("unrelated packet: verdict %d", ret)
	}
	if ret, _ := runTC(t, b.objs.SvcTcEgress, packet(protoTCP, netip.MustParseAddrPort("10.244.1.9:8080"), client, nil)); ret != tcActUnspec {
		t.Errorf("unrelated reply: verdict %d", ret)
	}
}

func TestTCRemoteBackendSNATAndReselect(t *testing.T) {
	b := newTestBackend(t, Options{})
	remote := netip.MustParseAddrPort("10.244.2.5:8080")
	s := nodePortService(false, ep("10.244.2.5", "node2", true, true, false))
	st := testState(s)
	mustSync(t, b, nil, st)
	// BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1): give it the node address.
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}

	// SNATed packets carry a node address as source: they are redirected out directly.
	ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, nodePort, nil))
	if ret != tcActRedir {
		t.Fatalf("ingress verdict %d, want redirect", ret)
	}
	src, dst := tuple(t, out)
	if src.Addr() != nodePort.Addr() || dst != remote {
		t.Fatalf("remote backend: %v -> %v, want SNAT to %v and DNAT to %v", src, dst, nodePort.Addr(), remote)
	}
	snat := src
	// The backend answers the node; ingress restores client and NodePort.
	ret, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, remote, snat, nil))
	if ret != tcActRedir {
		t.Fatalf("reply verdict %d", ret)
	}
	if src, dst := tuple(t, out); src != nodePort || dst != client {
		t.Fatalf("reply %v -> %v, want %v -> %v", src, dst, nodePort, client)
	}
	// Conntrack: the next packet of the flow uses the same translation.
	_, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, nodePort, []byte("x")))
	if src, dst := tuple(t, out); src != snat || dst != remote {
		t.Fatalf("second packet %v -> %v, want %v -> %v", src, dst, snat, remote)
	}
	// A second client using the same source port gets another SNAT port.
	other := netip.MustParseAddrPort("172.31.0.101:40000")
	_, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, other, nodePort, nil))
	if src, _ := tuple(t, out); src == snat {
		t.Fatalf("two clients share SNAT tuple %v", src)
	}

	// The backend goes away: the flow is sent to the new one instead of a dead address.
	st2 := testState(nodePortService(false, ep("10.244.2.6", "node2", true, true, false)))
	mustSync(t, b, st, st2)
	_, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, nodePort, []byte("y")))
	if _, dst := tuple(t, out); dst != netip.MustParseAddrPort("10.244.2.6:8080") {
		t.Fatalf("after backend removal the flow still goes to %v", dst)
	}

	// No endpoints at all: a NodePort (a node address) is left to the stack, which refuses
	// it (RST / ICMP port unreachable, like kube-proxy's REJECT); the ClusterIP, which no
	// one on the node answers for, is dropped.
	st3 := testState(nodePortService(false))
	mustSync(t, b, st2, st3)
	if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, netip.MustParseAddrPort("172.31.0.102:1234"), nodePort, nil)); ret != tcActUnspec {
		t.Fatalf("no endpoints, NodePort: verdict %d, want the stack (unspec) to refuse it", ret)
	}
	// The ClusterIP (no one on the node answers for it): TCP is answered with a RST built
	// from the packet and sent back; UDP is dropped.
	cl := netip.MustParseAddrPort("172.31.0.102:1234")
	syn := packet(protoTCP, cl, vip, nil)
	copy(syn[0:6], []byte{2, 0, 0, 0, 0, 1})   // destination MAC (the node)
	copy(syn[6:12], []byte{2, 0, 0, 0, 0, 2})  // source MAC (the client's router)
	binary.BigEndian.PutUint32(syn[38:], 1000) // sequence number
	// TCP options (an MSS option and padding) that the RST must not carry.
	syn = withTCPOptions(syn, []byte{2, 4, 0x05, 0xb4, 1, 1, 1, 0})
	ret, out = runTC(t, b.objs.SvcTcIngress, syn)
	if ret != tcActRedir {
		t.Fatalf("no endpoints, ClusterIP from outside: verdict %d, want a RST sent back (redirect)", ret)
	}
	if len(out) != 54 {
		t.Fatalf("RST is %d bytes, want 54 (no options, no payload)", len(out))
	}
	if src, dst := tuple(t, out); src != vip || dst != cl {
		t.Fatalf("RST %v -> %v, want %v -> %v", src, dst, vip, cl)
	}
	if fmt.Sprint(out[0:6], out[6:12]) != fmt.Sprint([]byte{2, 0, 0, 0, 0, 2}, []byte{2, 0, 0, 0, 0, 1}) {
		t.Errorf("RST MACs %x -> %x, want swapped", out[6:12], out[0:6])
	}
	if flags, ack, seq := out[47], binary.BigEndian.Uint32(out[42:]), binary.BigEndian.Uint32(out[38:]); flags != 0x14 || ack != 1001 || seq != 0 {
		t.Errorf("RST flags %#x seq %d ack %d, want RST|ACK seq 0 ack 1001", flags, seq, ack)
	}
	if out[46]>>4 != 5 || binary.BigEndian.Uint16(out[16:]) != 40 {
		t.Errorf("RST header: data offset %d, IP total length %d", out[46]>>4, binary.BigEndian.Uint16(out[16:]))
	}
	// A segment with ACK and an odd-length payload: the RST takes its sequence number from
	// the acknowledgment, and the checksum stays right with the payload removed.
	seg := packet(protoTCP, cl, vip, []byte("abc"))
	seg[47] = 0x18                              // PSH|ACK
	binary.BigEndian.PutUint32(seg[42:], 77777) // acknowledgment number
	seg = withTCPOptions(seg[:54], nil)
	seg = append(seg, 'a', 'b', 'c')
	binary.BigEndian.PutUint16(seg[16:], uint16(len(seg)-14))
	seg[24], seg[25] = 0, 0
	binary.BigEndian.PutUint16(seg[24:], checksum(seg[14:34], 0))
	seg[50], seg[51] = 0, 0
	binary.BigEndian.PutUint16(seg[50:], checksum(seg[34:], pseudo(seg[14:34], len(seg)-34)))
	ret, out = runTC(t, b.objs.SvcTcIngress, seg)
	if ret != tcActRedir || len(out) != 54 {
		t.Fatalf("ACK segment: verdict %d, %d bytes; want a 54-byte RST", ret, len(out))
	}
	tuple(t, out) // checks both checksums
	if flags, seq := out[47], binary.BigEndian.Uint32(out[38:]); flags != 0x04 || seq != 77777 {
		t.Errorf("RST to an ACK segment: flags %#x seq %d, want RST seq 77777", flags, seq)
	}
	udp := webService()
	udp.Ports[0].Protocol = model.UDP
	udp.Key.Name = "udp"
	udp.ClusterIPs = []netip.Addr{netip.MustParseAddr("10.96.0.30")}
	st3u := testState(nodePortService(false), udp)
	mustSync(t, b, st3, st3u)
	if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoUDP, cl, netip.MustParseAddrPort("10.96.0.30:80"), nil)); ret != tcActShot {
		t.Fatalf("no endpoints, UDP ClusterIP from outside: verdict %d, want drop", ret)
	}
	st3 = st3u
	// Local policy with endpoints on other nodes only: dropped, as kube-proxy does.
	st4 := testState(nodePortService(true, ep("10.244.2.5", "node2", true, true, false)))
	mustSync(t, b, st3, st4)
	if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, netip.MustParseAddrPort("172.31.0.102:1235"), nodePort, nil)); ret != tcActShot {
		t.Fatalf("Local without a local endpoint: verdict %d, want drop", ret)
	}
}

// TestTCLocalBackendMasquerade: under policy Cluster a flow from outside clusterCIDR is
// masqueraded also when its backend is local, for NodePorts and for ClusterIPs reached from
// outside; the backend's reply, which comes back through the pod bridge, is translated there
// and routed out. A source inside clusterCIDR keeps its address.
func TestTCLocalBackendMasquerade(t *testing.T) {
	b := newTestBackend(t, Options{})
	local := netip.MustParseAddrPort("10.244.1.5:8080")
	st := testState(nodePortService(false, ep("10.244.1.5", "node1", true, true, false)))
	mustSync(t, b, nil, st)
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	for i, fe := range []netip.AddrPort{nodePort, vip} {
		cl := netip.AddrPortFrom(client.Addr(), client.Port()+uint16(i))
		ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, cl, fe, nil))
		if ret != tcActRedir {
			t.Fatalf("%v: ingress verdict %d, want redirect (masqueraded)", fe, ret)
		}
		src, dst := tuple(t, out)
		if src.Addr() != nodePort.Addr() || dst != local {
			t.Fatalf("%v: %v -> %v, want SNAT to %v and DNAT to %v", fe, src, dst, nodePort.Addr(), local)
		}
		// The reply reaches the pod interface, addressed to the node.
		if ret, _ := runTC(t, b.objs.SvcTcEgress, packet(protoTCP, local, src, nil)); ret != tcActUnspec {
			t.Fatalf("%v: egress touched a masqueraded reply (verdict %d)", fe, ret)
		}
		ret, out = runTC(t, b.objs.SvcTcPodIngress, packet(protoTCP, local, src, []byte("reply")))
		if ret != tcActRedir {
			t.Fatalf("%v: pod ingress verdict %d, want redirect", fe, ret)
		}
		if s, d := tuple(t, out); s != fe || d != cl {
			t.Fatalf("%v: reply %v -> %v, want %v -> %v", fe, s, d, fe, cl)
		}
	}
	// A pod of another node (inside clusterCIDR) reaching the ClusterIP through this node
	// keeps its address toward a local backend (kube-proxy masquerades ClusterIP traffic
	// from outside clusterCIDR only)...
	pod := netip.MustParseAddrPort("10.244.3.7:4000")
	ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, pod, vip, nil))
	if src, dst := tuple(t, out); ret != tcActOK || src != pod || dst != local {
		t.Fatalf("ClusterIP, source in clusterCIDR: verdict %d, %v -> %v, want %v -> %v unredirected", ret, src, dst, pod, local)
	}
	// ... but not toward the NodePort: external destinations under policy Cluster are
	// masqueraded whatever the source (kube-proxy's KUBE-EXT chains).
	podNP := netip.MustParseAddrPort("10.244.3.7:4002")
	ret, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, podNP, nodePort, nil))
	if src, dst := tuple(t, out); ret != tcActRedir || src.Addr() != nodePort.Addr() || dst != local {
		t.Fatalf("NodePort, source in clusterCIDR: verdict %d, %v -> %v, want masqueraded to %v", ret, src, dst, nodePort.Addr())
	}
	// Its reply is not the pod interface's business (egress restores it on the way out).
	if ret, _ := runTC(t, b.objs.SvcTcPodIngress, packet(protoTCP, local, pod, nil)); ret != tcActUnspec {
		t.Fatalf("pod ingress on an unmasqueraded reply: verdict %d", ret)
	}
	// Traffic of pods that is no reply passes untouched.
	if ret, _ := runTC(t, b.objs.SvcTcPodIngress, packet(protoTCP, local, netip.MustParseAddrPort("172.31.0.1:22"), nil)); ret != tcActUnspec {
		t.Fatalf("pod ingress on unrelated traffic: verdict %d", ret)
	}
	// Without clusterCIDR every source is outside it: masqueraded, for ClusterIPs too.
	st2 := testState(nodePortService(false, ep("10.244.1.5", "node1", true, true, false)))
	st2.ClusterCIDRs = nil
	mustSync(t, b, st, st2)
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	pod2 := netip.MustParseAddrPort("10.244.3.7:4001")
	if ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, pod2, vip, nil)); ret != tcActRedir {
		src, _ := tuple(t, out)
		t.Fatalf("no clusterCIDR: verdict %d (source %v), want masqueraded", ret, src)
	}
}

func TestTCSourceRangesAndMasquerade(t *testing.T) {
	b := newTestBackend(t, Options{})
	lbIP := netip.MustParseAddrPort("172.31.0.50:80")
	s := webService(ep("10.244.1.5", "node1", true, true, false))
	s.Type = model.LoadBalancer
	s.LoadBalancerIPs = []netip.Addr{lbIP.Addr()}
	s.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("172.31.0.96/30")}
	st := testState(s)
	st.MasqueradeAll = true
	mustSync(t, b, nil, st)
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	// 172.31.0.100 is outside 172.31.0.96/30: dropped.
	if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, lbIP, nil)); ret != tcActShot {
		t.Fatalf("client outside loadBalancerSourceRanges: verdict %d, want drop", ret)
	}
	// 172.31.0.97 is inside; masqueradeAll SNATs even to a local backend.
	inside := netip.MustParseAddrPort("172.31.0.97:5555")
	ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, inside, lbIP, nil))
	if ret != tcActRedir {
		t.Fatalf("client inside the ranges: verdict %d", ret)
	}
	if src, dst := tuple(t, out); src.Addr() != nodePort.Addr() || dst != netip.MustParseAddrPort("10.244.1.5:8080") {
		t.Fatalf("masqueradeAll: %v -> %v", src, dst)
	}
	// The ranges go away: everyone is accepted, and the range entries are removed.
	s2 := webService(ep("10.244.1.5", "node1", true, true, false))
	s2.Type = model.LoadBalancer
	s2.LoadBalancerIPs = s.LoadBalancerIPs
	st2 := testState(s2)
	mustSync(t, b, st, st2)
	// (The settings change made that sync full, which rewrote svc_ifaddrs.)
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	// Accepted; from outside clusterCIDR, so masqueraded even without masqueradeAll.
	ret, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, lbIP, nil))
	if ret != tcActRedir {
		t.Fatalf("without ranges: verdict %d", ret)
	}
	if src, _ := tuple(t, out); src.Addr() != nodePort.Addr() {
		t.Fatalf("without ranges: source %v, want masqueraded to %v", src, nodePort.Addr())
	}
	e, err := b.readMaps()
	if err != nil {
		t.Fatal(err)
	}
	if len(e.Ranges) != 0 {
		t.Errorf("%d source ranges left", len(e.Ranges))
	}
}

// TestPartialSyncMatchesFull drives random state changes through partial syncs of the real
// maps and checks after each that the maps hold exactly what was planned and that a full
// sync (which reads the maps back) finds nothing to write.
func TestPartialSyncMatchesFull(t *testing.T) {
	b := newTestBackend(t, Options{})
	rng := rand.New(rand.NewSource(7))
	var prev *model.State
	for round := 0; round < 60; round++ {
		st := randomState(rng)
		full := round%15 == 0
		var changes model.Changes
		if prev == nil {
			changes = model.Diff(nil, st)
		} else {
			changes = model.Diff(prev, st)
		}
		if _, err := b.Sync(context.Background(), st, changes, full); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		got, err := b.readMaps()
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(b.desired.want) || fmt.Sprint(got) != fmt.Sprint(b.written) {
			t.Fatalf("round %d: kernel maps differ from the plan:\nkernel %v\nwant   %v", round, got, b.desired.want)
		}
		if round%10 == 9 {
			res, err := b.Sync(context.Background(), st, model.Changes{}, true)
			if err != nil || res.Objects != 0 {
				t.Fatalf("round %d: full sync after partial ones wrote %d objects (err %v), want 0", round, res.Objects, err)
			}
		}
		prev = st
	}
}

// TestTCTerminatingKeepsExistingFlows: a backend that starts terminating gets no new flows,
// but flows already using it keep it (it stays in the qcount slots and the backend map).
func TestTCTerminatingKeepsExistingFlows(t *testing.T) {
	b := newTestBackend(t, Options{})
	a, c := "10.244.1.5", "10.244.1.6"
	st := testState(nodePortService(true, ep(a, "node1", true, true, false)))
	mustSync(t, b, nil, st)
	_, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, nodePort, []byte("1")))
	if _, dst := tuple(t, out); dst.Addr().String() != a {
		t.Fatalf("first packet went to %v", dst)
	}
	st2 := testState(nodePortService(true, ep(a, "node1", false, true, true), ep(c, "node1", true, true, false)))
	mustSync(t, b, st, st2)
	for i := 0; i < 20; i++ {
		_, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, client, nodePort, []byte("2")))
		if _, dst := tuple(t, out); dst.Addr().String() != a {
			t.Fatalf("existing flow moved to %v while its backend is terminating", dst)
		}
		other := netip.AddrPortFrom(netip.MustParseAddr("172.31.0.200"), uint16(20000+i))
		_, out = runTC(t, b.objs.SvcTcIngress, packet(protoTCP, other, nodePort, []byte("3")))
		if _, dst := tuple(t, out); dst.Addr().String() != c {
			t.Fatalf("new flow went to terminating backend %v", dst)
		}
	}
}

// withTCPOptions returns the TCP packet pkt (built by packet, without payload) with opts
// appended to its TCP header, lengths and checksums updated.
func withTCPOptions(pkt, opts []byte) []byte {
	out := append(append([]byte(nil), pkt...), opts...)
	ip, l4 := out[14:34], out[34:]
	binary.BigEndian.PutUint16(ip[2:], uint16(len(out)-14))
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	l4[12] = byte((20+len(opts))/4) << 4
	l4[16], l4[17] = 0, 0
	binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudo(ip, len(l4))))
	return out
}
