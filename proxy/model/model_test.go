package model

import (
	"net/netip"
	"testing"
)

func ep(ip string, node string, ready, serving, terminating bool) Endpoint {
	return Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Ready: ready, Serving: serving, Terminating: terminating}
}

func ips(eps []Endpoint) []string {
	var out []string
	for _, e := range eps {
		out = append(out, e.IP.String())
	}
	return out
}

func same(a []string, b ...string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestCategorize(t *testing.T) {
	ready1 := ep("10.244.1.2", "n1", true, true, false)
	ready2 := ep("10.244.2.2", "n2", true, true, false)
	term1 := ep("10.244.1.3", "n1", false, true, true)
	term2 := ep("10.244.2.3", "n2", false, true, true)
	notServing := ep("10.244.1.4", "n1", false, false, true)
	cases := []struct {
		name         string
		svc          Service
		eps          []Endpoint
		cluster      []string
		local        []string
		usesLocal    bool
		anyEndpoints bool
	}{
		{name: "ready only", eps: []Endpoint{ready1, ready2, term1}, cluster: []string{"10.244.1.2", "10.244.2.2"}, anyEndpoints: true},
		{name: "terminating fallback", eps: []Endpoint{term1, term2, notServing}, cluster: []string{"10.244.1.3", "10.244.2.3"}, anyEndpoints: true},
		{name: "nothing usable", eps: []Endpoint{notServing}, cluster: nil, anyEndpoints: true},
		{name: "no endpoints", eps: nil},
		{name: "internal local", svc: Service{InternalTrafficPolicyLocal: true}, eps: []Endpoint{ready1, ready2, term1},
			cluster: []string{"10.244.1.2", "10.244.2.2"}, local: []string{"10.244.1.2"}, usesLocal: true, anyEndpoints: true},
		{name: "local terminating fallback", svc: Service{InternalTrafficPolicyLocal: true}, eps: []Endpoint{ready2, term1},
			cluster: []string{"10.244.2.2"}, local: []string{"10.244.1.3"}, usesLocal: true, anyEndpoints: true},
		{name: "external local needs external reachability", svc: Service{ExternalTrafficPolicyLocal: true, Type: ClusterIP},
			eps: []Endpoint{ready1}, cluster: []string{"10.244.1.2"}, anyEndpoints: true},
		{name: "external local nodeport", svc: Service{ExternalTrafficPolicyLocal: true, Type: NodePort},
			eps: []Endpoint{ready1, ready2}, cluster: []string{"10.244.1.2", "10.244.2.2"}, local: []string{"10.244.1.2"}, usesLocal: true, anyEndpoints: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := &ServicePort{Endpoints: c.eps}
			got := CategorizeEndpoints(&c.svc, p, "n1", "z1")
			if !same(ips(got.Cluster), c.cluster...) {
				t.Errorf("cluster = %v, want %v", ips(got.Cluster), c.cluster)
			}
			if !same(ips(got.Local), c.local...) {
				t.Errorf("local = %v, want %v", ips(got.Local), c.local)
			}
			if got.UsesLocal != c.usesLocal || got.AnyEndpoints != c.anyEndpoints {
				t.Errorf("usesLocal=%v anyEndpoints=%v, want %v %v", got.UsesLocal, got.AnyEndpoints, c.usesLocal, c.anyEndpoints)
			}
		})
	}
}

func TestTopologyHints(t *testing.T) {
	a := ep("10.244.1.2", "n1", true, true, false)
	a.ZoneHints = []string{"z1"}
	b := ep("10.244.2.2", "n2", true, true, false)
	b.ZoneHints = []string{"z2"}
	svc := &Service{TrafficDistribution: "PreferClose"}
	got := CategorizeEndpoints(svc, &ServicePort{Endpoints: []Endpoint{a, b}}, "n1", "z1")
	if !same(ips(got.Cluster), "10.244.1.2") {
		t.Errorf("hints for z1 should keep only a: %v", ips(got.Cluster))
	}
	// One endpoint without a hint disables hints.
	c := ep("10.244.3.2", "n3", true, true, false)
	got = CategorizeEndpoints(svc, &ServicePort{Endpoints: []Endpoint{a, b, c}}, "n1", "z1")
	if len(got.Cluster) != 3 {
		t.Errorf("a missing hint must disable topology: %v", ips(got.Cluster))
	}
	// No endpoint for our zone: use all.
	got = CategorizeEndpoints(svc, &ServicePort{Endpoints: []Endpoint{a, b}}, "n9", "z9")
	if len(got.Cluster) != 2 {
		t.Errorf("no endpoint hinting our zone: want all, got %v", ips(got.Cluster))
	}
	// Without trafficDistribution hints are ignored.
	got = CategorizeEndpoints(&Service{}, &ServicePort{Endpoints: []Endpoint{a, b}}, "n1", "z1")
	if len(got.Cluster) != 2 {
		t.Errorf("hints without trafficDistribution: %v", ips(got.Cluster))
	}
}

func svc(name string, eps ...Endpoint) *Service {
	return &Service{Key: ServiceKey{"default", name}, Type: ClusterIP, Ports: []ServicePort{{Protocol: TCP, Port: 80, Endpoints: eps}}}
}

func TestDiff(t *testing.T) {
	a := ep("10.244.1.2", "n1", true, true, false)
	b := ep("10.244.1.3", "n1", true, true, false)
	prev := &State{NodeName: "n1", Services: []*Service{svc("x", a), svc("y", a), svc("z", b)}}
	next := &State{NodeName: "n1", Services: []*Service{svc("x", a), svc("y", a, b), svc("w")}}
	c := Diff(prev, next)
	if c.Settings {
		t.Error("settings did not change")
	}
	want := map[string]bool{"y": true, "z": true, "w": true}
	if len(c.Services) != len(want) {
		t.Fatalf("changed = %v, want y, z, w", c.Services)
	}
	for k := range c.Services {
		if !want[k.Name] {
			t.Errorf("unexpected change %v", k)
		}
	}
	next.MasqueradeAll = true
	if !Diff(prev, next).Settings {
		t.Error("MasqueradeAll change must be a settings change")
	}
	if c := Diff(nil, next); !c.Settings || len(c.Services) != 3 {
		t.Errorf("diff from nil: %+v", c)
	}
	if c := Diff(next, next); !c.Empty() {
		t.Errorf("diff with itself: %+v", c)
	}
}

func TestSortAndLookup(t *testing.T) {
	st := &State{Services: []*Service{svc("b"), svc("a"), {Key: ServiceKey{"kube-system", "dns"}}}}
	st.Services[0].Ports[0].Endpoints = []Endpoint{ep("10.244.1.9", "", true, true, false), ep("10.244.1.10", "", true, true, false)}
	st.Sort()
	if st.Services[0].Key.Name != "a" || st.Services[2].Key.Namespace != "kube-system" {
		t.Errorf("order: %v %v %v", st.Services[0].Key, st.Services[1].Key, st.Services[2].Key)
	}
	if got := ips(st.Service(ServiceKey{"default", "b"}).Ports[0].Endpoints); !same(got, "10.244.1.9", "10.244.1.10") {
		t.Errorf("endpoints must sort by address: %v", got)
	}
	if st.Service(ServiceKey{"default", "nope"}) != nil {
		t.Error("lookup of a missing service")
	}
}
