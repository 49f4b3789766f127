package ebpf

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// bigState has n ClusterIP services with 10 endpoints each.
func bigState(n int) *model.State {
	var svcs []*model.Service
	for i := 0; i < n; i++ {
		var eps []model.Endpoint
		for j := 0; j < 10; j++ {
			e := ep(fmt.Sprintf("10.244.%d.%d", (i/250)%256, 1+i%250), "node1", true, true, false)
			e.Port = uint16(8000 + j)
			eps = append(eps, e)
		}
		s := webService(eps...)
		s.Key.Name = fmt.Sprintf("svc%05d", i)
		s.ClusterIPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(1 + i%250)})}
		svcs = append(svcs, s)
	}
	return testState(svcs...)
}

// BenchmarkSync10k measures a cold full sync of 10,000 services x 10 endpoints, and a partial
// sync after one endpoint of one service changed.
func BenchmarkSync10k(b *testing.B) {
	requireRoot(b)
	be, err := New(Options{PinPath: privateBPFFS(b), NodeAddresses: []netip.Addr{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = be.Cleanup(context.Background()) })
	st := bigState(10000)
	b.Run("full-cold", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			_ = be.Cleanup(context.Background())
			var err error
			be, err = New(Options{PinPath: be.opts.PinPath, NodeAddresses: []netip.Addr{}})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			res, err := be.Sync(context.Background(), st, model.Diff(nil, st), true)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(res.Objects), "objects")
		}
	})
	b.Run("partial-one-endpoint", func(b *testing.B) {
		prev := st
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			next := bigState(10000)
			next.Services[42].Ports[0].Endpoints[3].Ready = i%2 == 0
			changes := model.Diff(prev, next)
			b.StartTimer()
			res, err := be.Sync(context.Background(), next, changes, false)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(res.Objects), "objects")
			prev = next
		}
	})
}
