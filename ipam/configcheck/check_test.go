package configcheck

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/proxy/model"
)

var (
	_ config.Allocator = (*ipam.ServiceAllocator)(nil)
	_                  = ipam.PortRange(config.PortRange{}) // same layout: the daemon converts
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func configWith(t *testing.T, services ...string) *config.Config {
	t.Helper()
	var b strings.Builder
	b.WriteString(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
nodeName: node1
clusterCIDR: 10.244.0.0/16
podCIDR: 10.244.1.0/24
serviceCIDR: 10.96.0.0/16
nodePortRange: 30000-32767
services:
`)
	for _, s := range services {
		fmt.Fprintf(&b, `  - name: %s
    type: NodePort
    ports:
      - {name: http, protocol: TCP, port: 80, targetPort: 8080}
    endpoints:
      - {ip: 10.244.1.5, nodeName: node1, ready: true}
`, s)
	}
	c, err := config.Parse("test.yaml", []byte(b.String()))
	if err != nil {
		t.Fatalf("parse:\n%s\n%v", b.String(), err)
	}
	return c
}

type assigned struct {
	vip netip.Addr
	np  uint16
}

func build(t *testing.T, c *config.Config, a config.Allocator) map[string]assigned {
	t.Helper()
	st, err := c.BuildState("node1", nil, a)
	if err != nil {
		t.Fatalf("BuildState: %v", err)
	}
	out := map[string]assigned{}
	for _, s := range st.Services {
		if len(s.ClusterIPs) != 1 || len(s.Ports) != 1 {
			t.Fatalf("service %s: %v VIPs, %d ports", s.Key, s.ClusterIPs, len(s.Ports))
		}
		out[s.Key.Name] = assigned{s.ClusterIPs[0], s.Ports[0].NodePort}
	}
	return out
}

// TestBuildStateOverStore: config.BuildState (which calls Retain before allocating) with the
// persistent allocator: VIPs and node ports survive reloads and restarts, a removed service
// keeps them through the grace period and loses them after it.
func TestBuildStateOverStore(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	open := func() (*ipam.Store, *ipam.ServiceAllocator) {
		s, err := ipam.Open(dir, ipam.Options{Now: clk.now, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		a, err := s.NewServiceAllocator(ipam.ServiceOptions{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
			NodePortRange: ipam.PortRange(config.PortRange{Min: 30000, Max: 32767})})
		if err != nil {
			t.Fatal(err)
		}
		return s, a
	}
	s, a := open()
	first := build(t, configWith(t, "a", "b", "c"), a)
	if first["a"].vip.String() != "10.96.1.1" || first["a"].np != 30086 {
		t.Fatalf("first VIP / node port = %v, want 10.96.1.1 / 30086 (upper bands)", first["a"])
	}
	if again := build(t, configWith(t, "a", "b", "c"), a); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Fatalf("reload changed assignments: %v -> %v", first, again)
	}
	// b is removed; a new service d must not get b's VIP or port while b's grace runs.
	second := build(t, configWith(t, "a", "c", "d"), a)
	if second["d"].vip == first["b"].vip || second["d"].np == first["b"].np {
		t.Fatalf("d got b's VIP or node port during b's grace period: %v, b had %v", second["d"], first["b"])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Restart 5 minutes later: b comes back and gets its old VIP and node port.
	clk.add(5 * time.Minute)
	s, a = open()
	third := build(t, configWith(t, "a", "b", "c", "d"), a)
	for _, n := range []string{"a", "b", "c"} {
		if third[n] != first[n] {
			t.Fatalf("%s after restart = %v, had %v", n, third[n], first[n])
		}
	}
	if third["d"] != second["d"] {
		t.Fatalf("d after restart = %v, had %v", third["d"], second["d"])
	}
	// c is removed for longer than the grace period: its VIP goes back to the pool, and an
	// explicit request for it succeeds.
	build(t, configWith(t, "a", "b", "d"), a)
	clk.add(ipam.DefaultGracePeriod)
	build(t, configWith(t, "a", "b", "d"), a)
	if got, err := a.ServiceIP(model.ServiceKey{Namespace: "default", Name: "e"}, netip.MustParsePrefix("10.96.0.0/16"), first["c"].vip); err != nil || got != first["c"].vip {
		t.Fatalf("c's VIP after its grace period: %v, %v", got, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
