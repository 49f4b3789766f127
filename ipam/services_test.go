package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func svcAlloc(t testing.TB, s *Store, opts ServiceOptions) *ServiceAllocator {
	t.Helper()
	a, err := s.NewServiceAllocator(opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestBandOffsets(t *testing.T) {
	for _, c := range []struct{ size, want uint64 }{
		{14, 16}, {254, 16}, {4094, 255}, {4096, 256}, {65534, 256}, {1 << 40, 256},
	} {
		if got := ServiceBandOffset(c.size); got != c.want {
			t.Errorf("ServiceBandOffset(%d) = %d, want %d", c.size, got, c.want)
		}
	}
	for _, c := range []struct{ size, want uint64 }{
		{100, 16}, {2768, 86}, {10000, 128},
	} {
		if got := NodePortBandOffset(c.size); got != c.want {
			t.Errorf("NodePortBandOffset(%d) = %d, want %d", c.size, got, c.want)
		}
	}
}

func TestServiceVIPBands(t *testing.T) {
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/24") // 254 usable: lower band .1-.16, upper .17-.254
	got, err := a.ServiceIP(svcKey("s0"), cidr, netip.Addr{})
	if err != nil || got.String() != "10.96.0.17" {
		t.Fatalf("first dynamic VIP = %v, %v; want 10.96.0.17 (first of the upper band)", got, err)
	}
	for i := 1; i < 238; i++ { // the rest of the upper band
		got, err := a.ServiceIP(svcKey(fmt.Sprint("s", i)), cidr, netip.Addr{})
		if err != nil {
			t.Fatal(err)
		}
		if o := ordOfAddr(got).lo & 0xff; o < 17 {
			t.Fatalf("dynamic VIP %v taken from the lower band while the upper band has room", got)
		}
	}
	// An explicit VIP in the lower band is honoured.
	if got, err := a.ServiceIP(svcKey("explicit"), cidr, netip.MustParseAddr("10.96.0.10")); err != nil || got.String() != "10.96.0.10" {
		t.Fatalf("explicit lower-band VIP = %v, %v", got, err)
	}
	// The upper band is full: dynamic allocation falls back to the lower band.
	got, err = a.ServiceIP(svcKey("overflow"), cidr, netip.Addr{})
	if err != nil || got.String() != "10.96.0.1" {
		t.Fatalf("dynamic VIP with a full upper band = %v, %v; want 10.96.0.1", got, err)
	}
	// A /16: offset 256, so the first dynamic VIP is 10.97.1.1.
	got, err = a.ServiceIP(svcKey("big"), netip.MustParsePrefix("10.97.0.0/16"), netip.Addr{})
	if err != nil || got.String() != "10.97.1.1" {
		t.Fatalf("first dynamic VIP of a /16 = %v, %v; want 10.97.1.1", got, err)
	}
}

func TestServiceVIPExplicitConflictAndChange(t *testing.T) {
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/16")
	want := netip.MustParseAddr("10.96.0.10")
	if got, err := a.ServiceIP(svcKey("web"), cidr, want); err != nil || got != want {
		t.Fatalf("explicit VIP = %v, %v", got, err)
	}
	if got, err := a.ServiceIP(svcKey("web"), cidr, want); err != nil || got != want {
		t.Fatalf("repeated explicit VIP = %v, %v", got, err)
	}
	_, err := a.ServiceIP(svcKey("db"), cidr, want)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) || ce.Owner != "service default/web" ||
		!strings.Contains(err.Error(), "10.96.0.10") || !strings.Contains(err.Error(), "default/web") {
		t.Fatalf("conflicting VIP: %v, want a ConflictError naming default/web", err)
	}
	// Outside the range, the network address, the broadcast address: refused.
	for _, bad := range []string{"10.95.0.1", "10.96.0.0", "10.96.255.255"} {
		if _, err := a.ServiceIP(svcKey("db"), cidr, netip.MustParseAddr(bad)); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("VIP %s: %v, want ErrOutOfRange", bad, err)
		}
	}
	if _, err := a.ServiceIP(svcKey("db"), cidr, netip.MustParseAddr("fd00::1")); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("IPv6 VIP in an IPv4 range: %v, want ErrOutOfRange", err)
	}
	// web moves to another explicit VIP: the old one is free for db.
	if got, err := a.ServiceIP(svcKey("web"), cidr, netip.MustParseAddr("10.96.0.11")); err != nil || got.String() != "10.96.0.11" {
		t.Fatalf("changed explicit VIP = %v, %v", got, err)
	}
	if got, err := a.ServiceIP(svcKey("db"), cidr, want); err != nil || got != want {
		t.Fatalf("db takes web's old VIP: %v, %v", got, err)
	}
	// A service without clusterIP keeps the VIP it has.
	if got, err := a.ServiceIP(svcKey("db"), cidr, netip.Addr{}); err != nil || got != want {
		t.Fatalf("db without explicit VIP = %v, %v; want its VIP %v", got, err, want)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestServiceVIPExhaustionAndIPv6(t *testing.T) {
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/29") // 6 usable, smaller than the band offset: one band
	seen := map[netip.Addr]bool{}
	for i := range 6 {
		got, err := a.ServiceIP(svcKey(fmt.Sprint("s", i)), cidr, netip.Addr{})
		if err != nil || seen[got] {
			t.Fatalf("VIP %d = %v, %v (seen before: %v)", i, got, err, seen[got])
		}
		seen[got] = true
	}
	_, err := a.ServiceIP(svcKey("s6"), cidr, netip.Addr{})
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.96.0.0/29") || !strings.Contains(err.Error(), "default/s6") {
		t.Fatalf("7th VIP: %v, want ErrExhausted naming the range and the service", err)
	}
	// IPv6: the network address is skipped; a dual-stack service has one VIP per family.
	v6 := netip.MustParsePrefix("fd00:96::/112")
	got, err := a.ServiceIP(svcKey("s0"), v6, netip.Addr{})
	if err != nil || got.String() != "fd00:96::101" { // offset min(max(16, 65535/16), 256) = 256
		t.Fatalf("IPv6 VIP = %v, %v; want fd00:96::101", got, err)
	}
	if got4, err := a.ServiceIP(svcKey("s0"), cidr, netip.Addr{}); err != nil || !seen[got4] {
		t.Fatalf("s0's IPv4 VIP after its IPv6 one = %v, %v", got4, err)
	}
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range st.Ranges {
		if r.Range == "fd00:96::/112" {
			found = r.Size == 65535 && r.Used == 1
		}
	}
	if !found {
		t.Fatalf("status ranges = %+v, want fd00:96::/112 with size 65535 used 1", st.Ranges)
	}
}

func TestNodePorts(t *testing.T) {
	s := openStore(t, t.TempDir(), newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{}) // 30000-32767: 2768 ports, lower band 30000-30085
	got, err := a.NodePort(portKey("web", "http"), 0)
	if err != nil || got != 30086 {
		t.Fatalf("first dynamic node port = %d, %v; want 30086", got, err)
	}
	if again, err := a.NodePort(portKey("web", "http"), 0); err != nil || again != got {
		t.Fatalf("repeat = %d, %v; want %d", again, err, got)
	}
	hc, err := a.HealthCheckNodePort(svcKey("web"), 0)
	if err != nil || hc != 30087 {
		t.Fatalf("health-check node port = %d, %v; want 30087", hc, err)
	}
	if p, err := a.NodePort(portKey("db", "sql"), 30080); err != nil || p != 30080 {
		t.Fatalf("explicit node port = %d, %v", p, err)
	}
	_, err = a.NodePort(portKey("other", "x"), 30080)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "service default/db port sql/TCP") {
		t.Fatalf("taken node port: %v, want a conflict naming default/db port sql/TCP", err)
	}
	_, err = a.HealthCheckNodePort(svcKey("other"), hc)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "health check of service default/web") {
		t.Fatalf("taken health-check port: %v, want a conflict naming web's health check", err)
	}
	if _, err := a.NodePort(portKey("other", "x"), 29999); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("node port outside the range: %v, want ErrOutOfRange", err)
	}
	// Ports of one service that differ in protocol may share a number; others may not.
	dnsUDP := model.PortKey{Service: svcKey("dns"), Port: "dns", Protocol: model.UDP}
	dnsTCP := model.PortKey{Service: svcKey("dns"), Port: "dns-tcp", Protocol: model.TCP}
	if p, err := a.NodePort(dnsUDP, 30053); err != nil || p != 30053 {
		t.Fatalf("dns/UDP = %d, %v", p, err)
	}
	if p, err := a.NodePort(dnsTCP, 30053); err != nil || p != 30053 {
		t.Fatalf("dns-tcp/TCP sharing 30053 with dns/UDP = %d, %v", p, err)
	}
	if _, err := a.NodePort(model.PortKey{Service: svcKey("dns"), Port: "again", Protocol: model.UDP}, 30053); !errors.Is(err, ErrConflict) {
		t.Fatalf("second UDP port on 30053: %v, want a conflict", err)
	}
	if _, err := a.HealthCheckNodePort(svcKey("dns"), 30053); !errors.Is(err, ErrConflict) {
		t.Fatalf("health-check port sharing a service port: %v, want a conflict", err)
	}
	// Releasing the service frees both users of 30053 and every other port it holds.
	freed, err := a.ReleaseService(context.Background(), svcKey("dns"))
	if err != nil || len(freed) != 1 || len(freed[0].Users) != 2 {
		t.Fatalf("ReleaseService(dns) = %+v, %v; want one item with two users", freed, err)
	}
	if p, err := a.NodePort(portKey("other", "x"), 30053); err != nil || p != 30053 {
		t.Fatalf("30053 after release = %d, %v", p, err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	// A small range: dynamic allocation exhausts with a clear error.
	s2 := openStore(t, t.TempDir(), newFakeClock(), Options{})
	b := svcAlloc(t, s2, ServiceOptions{NodePortRange: PortRange{31000, 31002}})
	for i := range 3 {
		if _, err := b.NodePort(portKey(fmt.Sprint("s", i), ""), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.HealthCheckNodePort(svcKey("s9"), 0); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "31000-31002") {
		t.Fatalf("full node port range: %v, want ErrExhausted naming 31000-31002", err)
	}
}

func TestParsePortRange(t *testing.T) {
	if r, err := ParsePortRange("30000-32767"); err != nil || r != DefaultNodePortRange {
		t.Fatalf("ParsePortRange = %v, %v", r, err)
	}
	for _, bad := range []string{"", "0-10", "5-4", "a-b", "1-70000"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q) accepted", bad)
		}
	}
}

// TestServiceGracePeriod drives the config.Allocator protocol: allocate for every service of a
// config, then Retain.
func TestServiceGracePeriod(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := newFakeClock()
	s := openStore(t, dir, clock, Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/16")
	type svcState struct {
		vip netip.Addr
		np  uint16
	}
	load := func(a *ServiceAllocator, names ...string) map[string]svcState {
		t.Helper()
		out := map[string]svcState{}
		var keys []model.ServiceKey
		for _, n := range names {
			vip, err := a.ServiceIP(svcKey(n), cidr, netip.Addr{})
			if err != nil {
				t.Fatal(err)
			}
			np, err := a.NodePort(portKey(n, "http"), 0)
			if err != nil {
				t.Fatal(err)
			}
			out[n] = svcState{vip, np}
			keys = append(keys, svcKey(n))
		}
		if _, err := a.RetainContext(ctx, keys); err != nil {
			t.Fatal(err)
		}
		return out
	}
	first := load(a, "a", "b", "c")
	// Reload without b and c: they start their grace period.
	load(a, "a")
	clock.Advance(9 * time.Minute)
	load(a, "a")
	// b comes back within the grace period: same VIP and node port.
	back := load(a, "a", "b")
	if back["b"] != first["b"] {
		t.Fatalf("b came back within the grace period with %v, had %v", back["b"], first["b"])
	}
	st, _ := a.Status(ctx)
	var cMissing bool
	for _, it := range st.Items {
		if strings.Contains(it.Owner, "default/c") && !it.MissingSince.IsZero() {
			cMissing = true
		}
		if strings.Contains(it.Owner, "default/b") && !it.MissingSince.IsZero() {
			t.Errorf("b is back but status still says it is missing: %+v", it)
		}
	}
	if !cMissing {
		t.Errorf("status does not show c as missing: %+v", st.Items)
	}
	// Restart: the time c went missing is in the store.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, clock, Options{})
	a = svcAlloc(t, s, ServiceOptions{})
	clock.Advance(59 * time.Second) // 9m59s since c went missing
	if freed, err := a.Sweep(ctx); err != nil || len(freed) != 0 {
		t.Fatalf("sweep before c's grace ends freed %v, %v", freed, err)
	}
	clock.Advance(time.Second) // 10m
	freed, err := a.Sweep(ctx)
	if err != nil || len(freed) != 2 {
		t.Fatalf("sweep at the end of c's grace freed %+v, %v; want c's VIP and node port", freed, err)
	}
	for _, f := range freed {
		if !strings.Contains(f.Owner, "default/c") {
			t.Errorf("freed %+v, want only c's", f)
		}
	}
	// c's VIP is free again: another service may request it explicitly.
	if got, err := a.ServiceIP(svcKey("d"), cidr, first["c"].vip); err != nil || got != first["c"].vip {
		t.Fatalf("d asking for c's freed VIP = %v, %v", got, err)
	}
	// a and b were never touched by the expiry.
	now := load(a, "a", "b", "d")
	if now["a"] != first["a"] || now["b"] != first["b"] {
		t.Fatalf("a, b after the expiry = %v, %v; want %v, %v", now["a"], now["b"], first["a"], first["b"])
	}
}

func TestServiceGraceRemovedPortAndConfigurable(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), clock, Options{})
	a := svcAlloc(t, s, ServiceOptions{GracePeriod: time.Minute})
	http, err := a.NodePort(portKey("web", "http"), 0)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := a.NodePort(portKey("web", "metrics"), 0)
	if err != nil {
		t.Fatal(err)
	}
	a.Retain([]model.ServiceKey{svcKey("web")})
	// Next config: web lost its metrics port.
	if p, _ := a.NodePort(portKey("web", "http"), 0); p != http {
		t.Fatalf("http port changed: %d, want %d", p, http)
	}
	a.Retain([]model.ServiceKey{svcKey("web")})
	clock.Advance(time.Minute)
	if p, _ := a.NodePort(portKey("web", "http"), 0); p != http {
		t.Fatalf("http port changed: %d, want %d", p, http)
	}
	freed, err := a.RetainContext(ctx, []model.ServiceKey{svcKey("web")})
	if err != nil || len(freed) != 1 || freed[0].Item != fmt.Sprint(metrics) {
		t.Fatalf("after a 1-minute grace, freed %+v, %v; want only the metrics port %d", freed, err, metrics)
	}
	// Grace < 0: a service leaving the config loses its items at once.
	b := svcAlloc(t, openStore(t, t.TempDir(), clock, Options{}), ServiceOptions{GracePeriod: -1})
	for _, n := range []string{"tmp", "web"} {
		if _, err := b.ServiceIP(svcKey(n), netip.MustParsePrefix("10.96.0.0/16"), netip.Addr{}); err != nil {
			t.Fatal(err)
		}
	}
	freed, err = b.RetainContext(ctx, []model.ServiceKey{svcKey("web")})
	if err != nil || len(freed) != 1 || !strings.Contains(freed[0].Owner, "default/tmp") {
		t.Fatalf("no grace: freed %+v, %v; want tmp's VIP", freed, err)
	}
}

// TestServiceExplicitTakesExpired: an explicit request for an item whose owner's grace period
// is over gets it without waiting for a sweep; one still in grace is refused with its owner.
func TestServiceExplicitTakesExpired(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), clock, Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	cidr := netip.MustParsePrefix("10.96.0.0/16")
	vip, err := a.ServiceIP(svcKey("old"), cidr, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	a.Retain(nil)
	clock.Advance(time.Minute)
	if _, err := a.ServiceIP(svcKey("new"), cidr, vip); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "default/old") {
		t.Fatalf("VIP in grace: %v, want a conflict naming default/old", err)
	}
	clock.Advance(DefaultGracePeriod)
	if got, err := a.ServiceIP(svcKey("new"), cidr, vip); err != nil || got != vip {
		t.Fatalf("VIP after grace = %v, %v; want %v", got, err, vip)
	}
}

func TestNodePortRangeChange(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, newFakeClock(), Options{})
	a := svcAlloc(t, s, ServiceOptions{NodePortRange: PortRange{30000, 30099}})
	dyn, err := a.NodePort(portKey("web", "http"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.NodePort(portKey("db", "sql"), 30010); err != nil {
		t.Fatal(err)
	}
	// The range moves: the dynamic port is replaced by one in the new range; the explicit one,
	// now outside, is refused; the old ports stay reserved against explicit requests in a
	// range that overlaps them.
	b := a
	if err := b.SetNodePortRange(PortRange{30050, 30200}); err != nil || b.NodePortRange() != (PortRange{30050, 30200}) {
		t.Fatalf("SetNodePortRange: %v, range now %v", err, b.NodePortRange())
	}
	got, err := b.NodePort(portKey("web", "http"), 0)
	if err != nil || got < 30050 || got > 30200 || got == dyn {
		t.Fatalf("dynamic port after the range changed = %d, %v; want a new one in 30050-30200 (had %d)", got, err, dyn)
	}
	if _, err := b.NodePort(portKey("db", "sql"), 30010); !errors.Is(err, ErrOutOfRange) || !strings.Contains(err.Error(), "30050-30200") {
		t.Fatalf("explicit port outside the new range: %v", err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestServiceRun: Run sweeps on its own; the grace period is measured on the injected clock,
// only the ticker is real (the test waits for it with a timeout).
func TestServiceRun(t *testing.T) {
	clock := newFakeClock()
	s := openStore(t, t.TempDir(), clock, Options{})
	a := svcAlloc(t, s, ServiceOptions{})
	if _, err := a.ServiceIP(svcKey("gone"), netip.MustParsePrefix("10.96.0.0/16"), netip.Addr{}); err != nil {
		t.Fatal(err)
	}
	a.Retain(nil)
	clock.Advance(DefaultGracePeriod)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx, time.Millisecond); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := a.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Run did not free the expired VIP within 10 s: %+v", st.Items)
		}
		time.Sleep(time.Millisecond)
	}
}
