package iptables

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// bigState returns n ClusterIP services with eps endpoints each (every tenth a NodePort).
func bigState(n, eps int) *model.State {
	st := &model.State{
		NodeName:     "node1",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
	}
	for i := range n {
		s := &model.Service{
			Key:        model.ServiceKey{Namespace: "ns" + strconv.Itoa(i%50), Name: "svc-" + strconv.Itoa(i)},
			Type:       model.ClusterIP,
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})},
		}
		p := model.ServicePort{Name: "http", Protocol: model.TCP, Port: 80}
		if i%10 == 0 {
			s.Type = model.NodePort
			p.NodePort = uint16(30000 + i%2768)
		}
		for j := range eps {
			k := i*eps + j
			p.Endpoints = append(p.Endpoints, model.Endpoint{
				IP: netip.AddrFrom4([4]byte{10, 244, byte(k >> 8), byte(k)}), Port: 8080,
				NodeName: "node" + strconv.Itoa(j%5), Ready: true, Serving: true})
		}
		s.Ports = []model.ServicePort{p}
		st.Services = append(st.Services, s)
	}
	st.Sort()
	return st
}

// BenchmarkRender measures a full render of 10,000 services x 10 endpoints with a fresh
// planner (every chain name hashed), as a cold start does.
func BenchmarkRender(b *testing.B) {
	st := bigState(10000, 10)
	b.ReportAllocs()
	var rules, size int
	for b.Loop() {
		p := NewPlanner(Config{}).Plan(nil, st, model.Changes{}, true)
		rules, size = p.Rules, len(p.NAT)+len(p.Filter)
	}
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(size), "bytes")
}

// BenchmarkRenderWarm is a periodic full resync: the planner's name cache is warm.
func BenchmarkRenderWarm(b *testing.B) {
	st := bigState(10000, 10)
	pl := NewPlanner(Config{})
	pl.Plan(nil, st, model.Changes{}, true)
	b.ReportAllocs()
	for b.Loop() {
		pl.Plan(nil, st, model.Changes{}, true)
	}
}

// BenchmarkPartial plans a sync where one service of 10,000 lost an endpoint.
func BenchmarkPartial(b *testing.B) {
	st := bigState(10000, 10)
	pl := NewPlanner(Config{})
	first := pl.Plan(nil, st, model.Changes{}, true)
	next := cloneState(st)
	next.Services[5000].Ports[0].Endpoints = next.Services[5000].Ports[0].Endpoints[1:]
	ch := model.Diff(st, next)
	b.ReportAllocs()
	var rules, size int
	for b.Loop() {
		p := pl.Plan(first.Written, next, ch, false)
		rules, size = p.Rules, len(p.NAT)+len(p.Filter)
	}
	b.ReportMetric(float64(rules), "rules")
	b.ReportMetric(float64(size), "bytes")
}
