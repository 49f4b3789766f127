package ebpf

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
	"github.com/svcproxy/svcproxy/proxy/model"
)

func TestSNATPortsFor(t *testing.T) {
	nodePorts := PortRange{Min: 30000, Max: 32767}
	for _, c := range []struct {
		local, nodePorts, want PortRange
		warn                   bool
	}{
		// Linux's default: the ports above it.
		{local: PortRange{Min: 32768, Max: 60999}, nodePorts: nodePorts, want: PortRange{Min: 61000, Max: 65535}},
		{local: PortRange{Min: 1024, Max: 64511}, want: PortRange{Min: 64512, Max: 65535}},
		// Fewer than 1024 above: below the local range, above 1024, outside the node ports
		// (the larger side of them).
		{local: PortRange{Min: 40000, Max: 65000}, nodePorts: nodePorts, want: PortRange{Min: 1025, Max: 29999}},
		{local: PortRange{Min: 40000, Max: 65000}, nodePorts: PortRange{Min: 5000, Max: 7000}, want: PortRange{Min: 7001, Max: 39999}},
		{local: PortRange{Min: 40000, Max: 65000}, want: PortRange{Min: 1025, Max: 39999}},
		{local: PortRange{Min: 32768, Max: 65535}, nodePorts: nodePorts, want: PortRange{Min: 1025, Max: 29999}},
		{local: PortRange{Min: 20000, Max: 65535}, nodePorts: PortRange{Min: 10000, Max: 10100}, want: PortRange{Min: 10101, Max: 19999}},
		{local: PortRange{Min: 20000, Max: 65535}, nodePorts: PortRange{Min: 15000, Max: 19999}, want: PortRange{Min: 1025, Max: 14999}},
		{local: PortRange{Min: 20000, Max: 65535}, nodePorts: PortRange{Min: 2000, Max: 2100}, want: PortRange{Min: 2101, Max: 19999}},
		{local: PortRange{Min: 20000, Max: 65535}, nodePorts: PortRange{Min: 1000, Max: 30000}, want: PortRange{}, warn: true},
		// Neither side has 1024 ports: the upper one is kept, with a warning.
		{local: PortRange{Min: 1500, Max: 65000}, nodePorts: nodePorts, want: PortRange{Min: 65001, Max: 65535}, warn: true},
		// Nothing above: the lower one, with a warning.
		{local: PortRange{Min: 1500, Max: 65535}, want: PortRange{Min: 1025, Max: 1499}, warn: true},
		// Nothing at all outside the local range.
		{local: PortRange{Min: 1025, Max: 65535}, want: fallbackSNATPorts, warn: true},
		{local: PortRange{Min: 1, Max: 65535}, want: fallbackSNATPorts, warn: true},
	} {
		got, warn := SNATPortsFor(c.local, c.nodePorts)
		want := c.want
		if want.IsZero() {
			want = fallbackSNATPorts
		}
		if got != want || (warn != "") != c.warn {
			t.Errorf("SNATPortsFor(%v, %v) = %v, warning %q; want %v, warning %v", c.local, c.nodePorts, got, warn, want, c.warn)
		}
		if !c.warn && (got.overlaps(c.local) || got.overlaps(c.nodePorts) || got.Size() < minSNATPorts || got.Min <= 1024) {
			t.Errorf("SNATPortsFor(%v, %v) = %v overlaps the local or node port range", c.local, c.nodePorts, got)
		}
	}
}

// snatFlow sends the first packet of a flow from cl to the NodePort and returns the source
// address:port it was SNATed to.
func snatFlow(t *testing.T, b *Backend, cl netip.AddrPort) (netip.AddrPort, uint32) {
	t.Helper()
	ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, cl, nodePort, nil))
	if ret != tcActRedir {
		return netip.AddrPort{}, ret
	}
	src, _ := tuple(t, out)
	if src.Addr() != nodePort.Addr() {
		t.Fatalf("flow from %v: source %v, want SNAT to %v", cl, src, nodePort.Addr())
	}
	return src, ret
}

func remoteSNATBackend(t *testing.T, opts Options) *Backend {
	t.Helper()
	b := newTestBackend(t, opts)
	mustSync(t, b, nil, testState(nodePortService(false, ep("10.244.2.5", "node2", true, true, false))))
	// BPF_PROG_TEST_RUN runs on the loopback device (ifindex 1): give it the node address.
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTCSNATPortRange: SNATed flows take their source port from the configured range only;
// the client's own port is kept only when it lies inside it and is free.
func TestTCSNATPortRange(t *testing.T) {
	t.Run("default", func(t *testing.T) {
		b := remoteSNATBackend(t, Options{})
		local, err := readLocalPortRange()
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := SNATPortsFor(local, PortRange{}); b.snatPorts != want {
			t.Fatalf("SNAT ports %v, want %v (local port range %v)", b.snatPorts, want, local)
		}
		for i := 0; i < 64; i++ {
			// Client ports inside the node's local port range, as an outside Linux client
			// would use: never kept.
			cl := netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 31, 0, byte(100 + i%4)}), local.Min+uint16(i))
			src, ret := snatFlow(t, b, cl)
			if ret != tcActRedir {
				t.Fatalf("flow %d: verdict %d", i, ret)
			}
			if !b.snatPorts.Contains(src.Port()) || local.Contains(src.Port()) || src.Port() == cl.Port() {
				t.Fatalf("flow from %v SNATed to port %d: want one in %v, outside the local range %v", cl, src.Port(), b.snatPorts, local)
			}
		}
	})
	t.Run("configured", func(t *testing.T) {
		r := PortRange{Min: 62000, Max: 62031}
		b := remoteSNATBackend(t, Options{SNATPorts: r})
		if b.snatPorts != r {
			t.Fatalf("SNAT ports %v, want the configured %v", b.snatPorts, r)
		}
		// A client port inside the range is kept when free...
		a := netip.MustParseAddrPort("172.31.0.100:62005")
		if src, _ := snatFlow(t, b, a); src.Port() != a.Port() {
			t.Fatalf("client port %d inside the range: SNATed to %d, want it kept", a.Port(), src.Port())
		}
		// ... and another one taken when a flow to the same backend holds it.
		o := netip.MustParseAddrPort("172.31.0.101:62005")
		so, _ := snatFlow(t, b, o)
		if so.Port() == o.Port() || !r.Contains(so.Port()) {
			t.Fatalf("second client on port %d: SNATed to %d, want another port in %v", o.Port(), so.Port(), r)
		}
		// Ports outside the range are never kept, even when free.
		seen := map[uint16]bool{a.Port(): true, so.Port(): true}
		for i := 0; i < 16; i++ {
			cl := netip.AddrPortFrom(netip.MustParseAddr("172.31.0.102"), uint16(40000+i))
			src, ret := snatFlow(t, b, cl)
			if ret != tcActRedir {
				t.Fatalf("flow %d: verdict %d", i, ret)
			}
			if !r.Contains(src.Port()) {
				t.Fatalf("client port %d SNATed to %d, outside %v", cl.Port(), src.Port(), r)
			}
			seen[src.Port()] = true
		}
		// Every flow has its own reverse entry: no two share a port.
		if n := len(seen); n != 18 {
			t.Errorf("18 flows to one backend used %d distinct SNAT ports", n)
		}
		snat := 0
		for k, v := range ctEntries(t, b) {
			if v.Kind == ctReply && v.Snat == 1 {
				snat++
				if !r.Contains(ntohs(k.Dport)) {
					t.Errorf("reverse entry on port %d, outside %v", ntohs(k.Dport), r)
				}
			}
		}
		if snat != 18 {
			t.Errorf("%d SNATed reverse entries, want 18", snat)
		}
	})
}

const (
	ctFwd      = 1
	ctReply    = 2
	ctFClosing = 1
	tcpFIN     = 0x01
	tcpSYN     = 0x02
	tcpRST     = 0x04
	tcpACK     = 0x10
)

func ctEntries(t *testing.T, b *Backend) map[svcbpf.SvcCtKey]svcbpf.SvcCtValue {
	t.Helper()
	out := map[svcbpf.SvcCtKey]svcbpf.SvcCtValue{}
	var k svcbpf.SvcCtKey
	var v svcbpf.SvcCtValue
	it := b.objs.SvcCt.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ctKey is the svc_ct key of a packet src -> dst.
func ctKey(proto uint8, src, dst netip.AddrPort) svcbpf.SvcCtKey {
	return svcbpf.SvcCtKey{Saddr: addrToBE(src.Addr()), Daddr: addrToBE(dst.Addr()), Sport: htons(src.Port()), Dport: htons(dst.Port()), Proto: proto}
}

// monoNow is bpf_ktime_get_ns's clock (CLOCK_MONOTONIC).
func monoNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// age sets the last use of the entries keys to ago before now.
func age(t *testing.T, b *Backend, ago time.Duration, keys ...svcbpf.SvcCtKey) {
	t.Helper()
	now := monoNow(t)
	if uint64(ago) >= now {
		t.Skipf("uptime %v is shorter than the age %v the test needs", time.Duration(now), ago)
	}
	for _, k := range keys {
		var v svcbpf.SvcCtValue
		if err := b.objs.SvcCt.Lookup(&k, &v); err != nil {
			t.Fatalf("entry %+v: %v", k, err)
		}
		v.LastNs = now - uint64(ago)
		if err := b.objs.SvcCt.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
}

// withFlags returns the TCP packet pkt (built by packet) with TCP flags fl.
func withFlags(pkt []byte, fl byte) []byte {
	out := append([]byte(nil), pkt...)
	ip, l4 := out[14:34], out[34:]
	l4[13] = fl
	l4[16], l4[17] = 0, 0
	binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudo(ip, len(l4))))
	return out
}

// TestTCConntrackAgeing: svc_ct entries of a flow idle in both directions past the timeout
// are treated as absent by every lookup of the tc programs and deleted; a FIN or RST marks
// the flow closing (short timeout), a new SYN on a closing tuple starts a fresh flow. In
// particular the reverse entry of a finished masqueraded flow no longer takes the replies of
// a local connection that uses the same tuple.
func TestTCConntrackAgeing(t *testing.T) {
	tm := &ctTimeouts{TCP: 60 * time.Second, TCPClosing: 2 * time.Second, UDP: 20 * time.Second}
	remote := netip.MustParseAddrPort("10.244.2.5:8080")
	stale, closingStale := 5*time.Minute, 10*time.Second

	t.Run("idle flow expires", func(t *testing.T) {
		b := remoteSNATBackend(t, Options{ctTimeouts: tm})
		cl := netip.MustParseAddrPort("172.31.0.100:40000")
		snat, _ := snatFlow(t, b, cl)
		fwd, rev := ctKey(protoTCP, cl, nodePort), ctKey(protoTCP, remote, snat)
		// Live: a packet from the backend to the SNAT tuple is the flow's reply.
		ack := withFlags(packet(protoTCP, remote, snat, nil), tcpSYN|tcpACK)
		if ret, out := runTC(t, b.objs.SvcTcIngress, ack); ret != tcActRedir {
			t.Fatalf("live flow: reply verdict %d", ret)
		} else if s, d := tuple(t, out); s != nodePort || d != cl {
			t.Fatalf("live flow: reply %v -> %v", s, d)
		}
		// One direction idle, the other not: still live, same translation.
		age(t, b, stale, fwd)
		if ret, out := runTC(t, b.objs.SvcTcIngress, withFlags(packet(protoTCP, cl, nodePort, nil), tcpACK)); ret != tcActRedir {
			t.Fatalf("forward entry idle, reply recent: verdict %d", ret)
		} else if s, d := tuple(t, out); s != snat || d != remote {
			t.Fatalf("forward entry idle, reply recent: %v -> %v, want %v -> %v", s, d, snat, remote)
		}
		// Both directions idle past the timeout: the flow is over. The backend's SYN-ACK to
		// a local socket that now uses the same port is left to the stack, and both entries
		// are gone.
		age(t, b, stale, fwd, rev)
		if ret, _ := runTC(t, b.objs.SvcTcIngress, ack); ret != tcActUnspec {
			t.Fatalf("expired flow: reply to its SNAT tuple verdict %d, want left to the stack", ret)
		}
		if e := ctEntries(t, b); len(e) != 0 {
			t.Fatalf("expired entries not deleted: %v", e)
		}
	})

	t.Run("expired SNAT port is free again", func(t *testing.T) {
		// One SNAT port: a second flow to the same backend finds none, until the first
		// one's entries expire.
		b := remoteSNATBackend(t, Options{ctTimeouts: tm, SNATPorts: PortRange{Min: 61000, Max: 61000}})
		a, o := netip.MustParseAddrPort("172.31.0.100:40000"), netip.MustParseAddrPort("172.31.0.101:40000")
		snat, _ := snatFlow(t, b, a)
		if snat.Port() != 61000 {
			t.Fatalf("SNAT port %d, want 61000", snat.Port())
		}
		if _, ret := snatFlow(t, b, o); ret != tcActShot {
			t.Fatalf("second flow with the only SNAT port taken: verdict %d, want drop", ret)
		}
		age(t, b, stale, ctKey(protoTCP, a, nodePort), ctKey(protoTCP, remote, snat))
		if got, ret := snatFlow(t, b, o); ret != tcActRedir || got != snat {
			t.Fatalf("after the first flow expired: verdict %d, source %v; want %v", ret, got, snat)
		}
	})

	t.Run("FIN and RST shorten the timeout", func(t *testing.T) {
		b := remoteSNATBackend(t, Options{ctTimeouts: tm})
		for i, fl := range []byte{tcpFIN | tcpACK, tcpRST} {
			for _, fromBackend := range []bool{false, true} {
				cl := netip.AddrPortFrom(netip.MustParseAddr("172.31.0.100"), uint16(41000+10*i))
				if fromBackend {
					cl = netip.AddrPortFrom(cl.Addr(), cl.Port()+1)
				}
				snat, _ := snatFlow(t, b, cl)
				fwd, rev := ctKey(protoTCP, cl, nodePort), ctKey(protoTCP, remote, snat)
				pkt := withFlags(packet(protoTCP, cl, nodePort, nil), fl)
				if fromBackend {
					pkt = withFlags(packet(protoTCP, remote, snat, nil), fl)
				}
				if ret, _ := runTC(t, b.objs.SvcTcIngress, pkt); ret != tcActRedir {
					t.Fatalf("flags %#x: verdict %d", fl, ret)
				}
				e := ctEntries(t, b)
				if e[fwd].Flags&ctFClosing == 0 || e[rev].Flags&ctFClosing == 0 {
					t.Fatalf("flags %#x from the backend %v: entries not marked closing: %+v %+v", fl, fromBackend, e[fwd], e[rev])
				}
				// Idle past the closing timeout (well within the open one): gone.
				age(t, b, closingStale, fwd, rev)
				if ret, _ := runTC(t, b.objs.SvcTcIngress, withFlags(packet(protoTCP, remote, snat, nil), tcpACK)); ret != tcActUnspec {
					t.Fatalf("flags %#x: closed flow still translated (verdict %d)", fl, ret)
				}
			}
		}
		// An open flow idle as long is kept.
		cl := netip.MustParseAddrPort("172.31.0.100:42000")
		snat, _ := snatFlow(t, b, cl)
		age(t, b, closingStale, ctKey(protoTCP, cl, nodePort), ctKey(protoTCP, remote, snat))
		if ret, _ := runTC(t, b.objs.SvcTcIngress, withFlags(packet(protoTCP, remote, snat, nil), tcpACK)); ret != tcActRedir {
			t.Fatalf("open flow idle %v: verdict %d, want translated", closingStale, ret)
		}
	})

	t.Run("SYN reopens a closing tuple", func(t *testing.T) {
		b := remoteSNATBackend(t, Options{ctTimeouts: tm})
		cl := netip.MustParseAddrPort("172.31.0.100:43000")
		snatFlow(t, b, cl)
		fwd := ctKey(protoTCP, cl, nodePort)
		runTC(t, b.objs.SvcTcIngress, withFlags(packet(protoTCP, cl, nodePort, nil), tcpFIN|tcpACK))
		if e := ctEntries(t, b); e[fwd].Flags&ctFClosing == 0 {
			t.Fatal("FIN did not mark the flow closing")
		}
		snat, ret := snatFlow(t, b, cl) // a SYN from the same client port
		if ret != tcActRedir {
			t.Fatalf("SYN on a closing tuple: verdict %d", ret)
		}
		e := ctEntries(t, b)
		if v := e[fwd]; v.Kind != ctFwd || v.Flags != 0 {
			t.Fatalf("SYN on a closing tuple: forward entry %+v, want a new open one", v)
		}
		if v := e[ctKey(protoTCP, remote, snat)]; v.Kind != ctReply || v.Flags != 0 {
			t.Fatalf("SYN on a closing tuple: reverse entry %+v, want a new open one", v)
		}
	})

	t.Run("reply paths", func(t *testing.T) {
		// Egress (a local backend's reply, no SNAT) and the pod interface (a local backend's
		// reply to a masqueraded flow) skip expired entries too.
		b := newTestBackend(t, Options{ctTimeouts: tm})
		local := netip.MustParseAddrPort("10.244.1.5:8080")
		s := nodePortService(true, ep("10.244.1.5", "node1", true, true, false))
		udp := s.Ports[0]
		udp.Name, udp.Protocol = "udp", model.UDP
		s.Ports = append(s.Ports, udp)
		mustSync(t, b, nil, testState(s))
		cl := netip.MustParseAddrPort("172.31.0.100:44000")
		if ret, _ := runTC(t, b.objs.SvcTcIngress, packet(protoUDP, cl, nodePort, nil)); ret != tcActOK {
			t.Fatalf("UDP to the NodePort: verdict %d", ret)
		}
		if ret, _ := runTC(t, b.objs.SvcTcEgress, packet(protoUDP, local, cl, nil)); ret != tcActOK {
			t.Fatalf("UDP reply of a live flow: verdict %d", ret)
		}
		age(t, b, time.Minute, ctKey(protoUDP, cl, nodePort), ctKey(protoUDP, local, cl))
		if ret, _ := runTC(t, b.objs.SvcTcEgress, packet(protoUDP, local, cl, nil)); ret != tcActUnspec {
			t.Fatalf("UDP reply of a flow idle past the timeout: verdict %d, want untouched", ret)
		}
		if e := ctEntries(t, b); len(e) != 0 {
			t.Fatalf("expired entries not deleted: %v", e)
		}

		// Masqueraded flow to a local backend: its reply comes through the pod interface.
		st := testState(nodePortService(false, ep("10.244.1.5", "node1", true, true, false)))
		mustSync(t, b, testState(s), st)
		if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
			t.Fatal(err)
		}
		ret, out := runTC(t, b.objs.SvcTcIngress, packet(protoTCP, cl, nodePort, nil))
		if ret != tcActRedir {
			t.Fatalf("masqueraded flow: verdict %d", ret)
		}
		snat, _ := tuple(t, out)
		reply := withFlags(packet(protoTCP, local, snat, nil), tcpSYN|tcpACK)
		if ret, _ := runTC(t, b.objs.SvcTcPodIngress, reply); ret != tcActRedir {
			t.Fatalf("pod interface, live flow: verdict %d", ret)
		}
		age(t, b, stale, ctKey(protoTCP, cl, nodePort), ctKey(protoTCP, local, snat))
		if ret, _ := runTC(t, b.objs.SvcTcPodIngress, reply); ret != tcActUnspec {
			t.Fatalf("pod interface, expired flow: verdict %d, want untouched", ret)
		}
	})
}

// TestRestartWithOtherSNATPorts: the SNAT range is a load-time constant of the programs, not
// pinned state. A daemon restarted with another range reuses the pinned links (switched to
// its programs) and maps, flows already masqueraded keep their port, new ones use the new
// range, and .rodata is never pinned.
func TestRestartWithOtherSNATPorts(t *testing.T) {
	requireRoot(t)
	ns := netnsAdd(t, "svcr-")
	dev := randName("vr")
	run(t, "ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
	run(t, "ip", "-n", ns, "addr", "add", "172.31.0.1/24", "dev", dev)
	run(t, "ip", "-n", ns, "link", "set", dev, "up")
	first, second := PortRange{Min: 62000, Max: 62099}, PortRange{Min: 63000, Max: 63099}
	opts := Options{PinPath: privateBPFFS(t), Interfaces: []string{dev}, SNATPorts: first}
	b, err := newTestBackendIn(t, ns, opts)
	if err != nil {
		t.Fatal(err)
	}
	st := testState(nodePortService(false, ep("10.244.2.5", "node2", true, true, false)))
	inNetns(t, ns, func() { _, err = b.Sync(context.Background(), st, model.Diff(nil, st), true) })
	if err != nil {
		t.Fatal(err)
	}
	if err := b.objs.SvcIfaddrs.Put(uint32(1), addrToBE(nodePort.Addr())); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort("172.31.0.100:40000")
	snatA, _ := snatFlow(t, b, a)
	if !first.Contains(snatA.Port()) {
		t.Fatalf("SNAT port %d outside %v", snatA.Port(), first)
	}
	linkIDs := map[string]link.ID{}
	for name, l := range b.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		linkIDs[name] = info.ID
	}
	ctInfo, err := b.objs.SvcCt.Info()
	if err != nil {
		t.Fatal(err)
	}
	ctID, _ := ctInfo.ID()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(opts.PinPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.Contains(e.Name(), "rodata") || strings.HasPrefix(e.Name(), ".") {
			t.Errorf("pinned %s: load-time constants must not be pinned", e.Name())
		}
	}

	opts.SNATPorts = second
	b2, err := newTestBackendIn(t, ns, opts)
	if err != nil {
		t.Fatalf("New after restart with another SNAT range: %v", err)
	}
	if len(b2.links) != len(linkIDs) {
		t.Fatalf("%d links after restart, want %d", len(b2.links), len(linkIDs))
	}
	progIDs := map[ebpf.ProgramID]bool{}
	for _, p := range b2.programs() {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progIDs[id] = true
	}
	for name, l := range b2.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		if info.ID != linkIDs[name] {
			t.Errorf("link %s recreated (id %d, was %d) instead of reused", name, info.ID, linkIDs[name])
		}
		if !progIDs[info.Program] {
			t.Errorf("link %s runs program %d, not one of the restarted backend's", name, info.Program)
		}
	}
	if info, err := b2.objs.SvcCt.Info(); err != nil {
		t.Fatal(err)
	} else if id, _ := info.ID(); id != ctID {
		t.Errorf("svc_ct recreated (id %d, was %d) instead of reused", id, ctID)
	}
	// The flow masqueraded before the restart keeps its translation...
	if got, _ := snatFlow(t, b2, a); got != snatA {
		t.Errorf("existing flow after restart SNATed to %v, was %v", got, snatA)
	}
	// ... new flows use the new range.
	if got, _ := snatFlow(t, b2, netip.MustParseAddrPort("172.31.0.101:40000")); !second.Contains(got.Port()) {
		t.Errorf("new flow after restart SNATed to port %d, want one in %v", got.Port(), second)
	}
}
