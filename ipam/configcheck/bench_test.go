package configcheck

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// bigConfig returns a ProxyConfig of n services with one static endpoint each; every fifth
// service is of type NodePort (so that the node port range holds them all).
func bigConfig(b *testing.B, n int) *config.Config {
	b.Helper()
	var sb strings.Builder
	sb.WriteString("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nnodeName: node1\nclusterCIDR: 10.244.0.0/16\npodCIDR: 10.244.1.0/24\nserviceCIDR: 10.96.0.0/16\nnodePortRange: 30000-32767\nservices:\n")
	for i := 0; i < n; i++ {
		typ := "ClusterIP"
		if i%5 == 0 {
			typ = "NodePort"
		}
		fmt.Fprintf(&sb, "  - {name: s%d, type: %s, ports: [{name: http, port: 80, targetPort: 8080}], endpoints: [{ip: 10.244.1.5}]}\n", i, typ)
	}
	c, err := config.Parse("big.yaml", []byte(sb.String()))
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func openAllocator(b *testing.B) *ipam.ServiceAllocator {
	b.Helper()
	s, err := ipam.Open(b.TempDir(), ipam.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	a, err := s.NewServiceAllocator(ipam.ServiceOptions{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		NodePortRange: ipam.PortRange(config.PortRange{Min: 30000, Max: 32767})})
	if err != nil {
		b.Fatal(err)
	}
	return a
}

// BenchmarkBuildStateOverStore measures config.BuildState of 10,000 services (12,000 VIPs and
// node ports) with the persistent allocator: "first" on an empty store (every item newly
// allocated, one fsync'd transaction each, as at the daemon's first start), "reload" on a
// store that already holds them all (a reload or restart of an unchanged file).
//
//	go test ./ipam/configcheck -run '^$' -bench BuildStateOverStore -benchmem
func BenchmarkBuildStateOverStore(b *testing.B) {
	c := bigConfig(b, 10000)
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			a := openAllocator(b)
			b.StartTimer()
			if _, err := c.BuildState("node1", nil, a); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reload", func(b *testing.B) {
		a := openAllocator(b)
		first, err := c.BuildState("node1", nil, a)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			st, err := c.BuildState("node1", nil, a)
			if err != nil {
				b.Fatal(err)
			}
			if i == 0 && assignments(st) != assignments(first) {
				b.Fatal("reload changed assignments")
			}
		}
	})
	b.Run("memalloc", func(b *testing.B) {
		a := config.NewMemAllocator()
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := c.BuildState("node1", nil, a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// assignments renders the VIPs and node ports of every service of st.
func assignments(st *model.State) string {
	var sb strings.Builder
	for _, s := range st.Services {
		fmt.Fprint(&sb, s.Key, s.ClusterIPs)
		for _, p := range s.Ports {
			fmt.Fprint(&sb, " ", p.NodePort)
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}
