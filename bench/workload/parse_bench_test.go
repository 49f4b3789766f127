package workload

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam"
)

// BenchmarkDaemonConfigPath measures what svcproxy does with the benchmark's config file
// before its first sync (config.Parse, then BuildState with an in-memory allocator), to tell
// how much of the daemon's start and of its peak memory the file costs:
//
//	go test ./bench/workload -run '^$' -bench DaemonConfigPath -benchmem
func BenchmarkDaemonConfigPath(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		a := netip.MustParseAddr("10.244.1.10")
		spec := Spec{Services: n, Endpoints: 10, ProbeIPs: []netip.Addr{a}, ChangeIPs: []netip.Addr{a}, NodeName: "node1"}
		data, err := spec.ProxyConfig(Settings{NodeName: "node1", Mode: "iptables", PodCIDR: "10.244.1.0/24"})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("parse/%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := config.Parse("bench.yaml", data); err != nil {
					b.Fatal(err)
				}
			}
		})
		cfg, err := config.Parse("bench.yaml", data)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("buildstate/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := cfg.BuildState("node1", nil, config.NewMemAllocator()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDaemonIPAM builds the state of the 10,000-service file with the daemon's
// persistent allocator (ipam.Store in a temp dir): "cold" is a fresh state directory (every
// VIP newly reserved, as on the daemon's first start), "warm" the same file again (a reload or
// a restart).
//
//	go test ./bench/workload -run '^$' -bench DaemonIPAM -benchtime 1x
func BenchmarkDaemonIPAM(b *testing.B) {
	a := netip.MustParseAddr("10.244.1.10")
	spec := Spec{Services: 10000, Endpoints: 10, ProbeIPs: []netip.Addr{a}, ChangeIPs: []netip.Addr{a}, NodeName: "node1"}
	data, err := spec.ProxyConfig(Settings{NodeName: "node1", Mode: "iptables", PodCIDR: "10.244.1.0/24"})
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Parse("bench.yaml", data)
	if err != nil {
		b.Fatal(err)
	}
	open := func(b *testing.B) *ipam.ServiceAllocator {
		st, err := ipam.Open(b.TempDir(), ipam.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		al, err := st.NewServiceAllocator(ipam.ServiceOptions{ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(ServiceCIDR)}})
		if err != nil {
			b.Fatal(err)
		}
		return al
	}
	b.Run("cold", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			al := open(b)
			b.StartTimer()
			if _, err := cfg.BuildState("node1", nil, al); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("warm", func(b *testing.B) {
		al := open(b)
		if _, err := cfg.BuildState("node1", nil, al); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := cfg.BuildState("node1", nil, al); err != nil {
				b.Fatal(err)
			}
		}
	})
}
