package ebpf

import (
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func ep(ip string, node string, ready, serving, term bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Ready: ready, Serving: serving, Terminating: term}
}

func testState(svcs ...*model.Service) *model.State {
	st := &model.State{NodeName: "node1", ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}, Services: svcs}
	st.Sort()
	return st
}

func webService(eps ...model.Endpoint) *model.Service {
	return &model.Service{
		Key:        model.ServiceKey{Namespace: "default", Name: "web"},
		Type:       model.ClusterIP,
		ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:      []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80, Endpoints: eps}},
	}
}

func keys(bs []BackendKey) []string {
	var out []string
	for _, b := range bs {
		out = append(out, fmt.Sprintf("%s:%d", b.Addr, b.Port))
	}
	return out
}

func TestPlanTerminatingAfterActive(t *testing.T) {
	s := webService(ep("10.244.1.5", "node1", true, true, false), ep("10.244.1.6", "node1", false, true, true), ep("10.244.1.7", "node1", false, false, false))
	fes, _ := PlanService(testState(s), s, nil)
	// One ClusterIP: scope ext (outside clients routed to the node) and scope int (socket-LB).
	if len(fes) != 2 || fes[0].Key.Scope != ScopeExt || fes[1].Key.Scope != ScopeInt {
		t.Fatalf("want the ClusterIP in both scopes, got %+v", fes)
	}
	if fes[0].Local || fes[0].NodeAddress || fmt.Sprint(keys(fes[0].Active)) != fmt.Sprint(keys(fes[1].Active)) {
		t.Errorf("ClusterIP for outside clients: %+v, want the internal endpoints, not Local, not a node address", fes[0])
	}
	if got := keys(fes[0].Active); fmt.Sprint(got) != "[10.244.1.5:8080]" {
		t.Errorf("active = %v", got)
	}
	if got := keys(fes[0].Terminating); fmt.Sprint(got) != "[10.244.1.6:8080]" {
		t.Errorf("terminating = %v (not-serving endpoints must not be kept)", got)
	}
	// When nothing is ready, serving+terminating endpoints take new flows (CategorizeEndpoints).
	s2 := webService(ep("10.244.1.6", "node1", false, true, true))
	fes, _ = PlanService(testState(s2), s2, nil)
	if got := keys(fes[0].Active); fmt.Sprint(got) != "[10.244.1.6:8080]" || len(fes[0].Terminating) != 0 {
		t.Errorf("fallback: active %v terminating %v", got, keys(fes[0].Terminating))
	}
}

func TestPlanNodePortAndPolicies(t *testing.T) {
	s := webService(ep("10.244.1.5", "node1", true, true, false), ep("10.244.2.5", "node2", true, true, false))
	s.Type = model.NodePort
	s.Ports[0].NodePort = 30080
	s.ExternalTrafficPolicyLocal = true
	s.ExternalIPs = []netip.Addr{netip.MustParseAddr("172.31.0.50")}
	s.AffinityTimeout = 3 * time.Hour
	nodeAddrs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("172.31.0.1"), netip.MustParseAddr("fd00::1")}
	fes, local := PlanService(testState(s), s, nodeAddrs)
	got := map[string]string{}
	for _, f := range fes {
		scope := "ext"
		if f.Key.Scope == ScopeInt {
			scope = "int"
		}
		if f.AffinitySeconds != 10800 {
			t.Errorf("%v: affinity %d", f.Key, f.AffinitySeconds)
		}
		got[fmt.Sprintf("%s:%d/%s", f.Key.Addr, f.Key.Port, scope)] = fmt.Sprint(keys(f.Active), f.Local)
		// Only NodePorts on node addresses are left to the stack (refused) without endpoints.
		if want := f.Key.Scope == ScopeExt && f.Key.Port == 30080; f.NodeAddress != want {
			t.Errorf("%v: NodeAddress %v, want %v", f.Key, f.NodeAddress, want)
		}
	}
	want := map[string]string{
		"10.96.0.10:80/ext":    "[10.244.1.5:8080 10.244.2.5:8080] false",
		"10.96.0.10:80/int":    "[10.244.1.5:8080 10.244.2.5:8080] false",
		"172.31.0.50:80/int":   "[10.244.1.5:8080 10.244.2.5:8080] false",
		"172.31.0.50:80/ext":   "[10.244.1.5:8080] true",
		"127.0.0.1:30080/int":  "[10.244.1.5:8080 10.244.2.5:8080] false",
		"172.31.0.1:30080/int": "[10.244.1.5:8080 10.244.2.5:8080] false",
		"172.31.0.1:30080/ext": "[10.244.1.5:8080] true",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("frontends:\n got %v\nwant %v", got, want)
	}
	if !local[BackendKey{netip.MustParseAddr("10.244.1.5"), 8080, protoTCP}] || local[BackendKey{netip.MustParseAddr("10.244.2.5"), 8080, protoTCP}] {
		t.Errorf("local flags wrong: %v", local)
	}
	for _, f := range fes {
		if f.Masquerade {
			t.Errorf("%v: masquerade set under policy Local (or on a ClusterIP without masqueradeAll)", f.Key)
		}
	}
	// Policy Cluster: external destinations are always masqueraded, ClusterIPs only from
	// outside clusterCIDR (decided per packet) unless masqueradeAll.
	s.ExternalTrafficPolicyLocal = false
	for _, all := range []bool{false, true} {
		st := testState(s)
		st.MasqueradeAll = all
		fes, _ := PlanService(st, s, nodeAddrs)
		for _, f := range fes {
			want := f.Key.Scope == ScopeExt && (all || f.Key.Addr.String() != "10.96.0.10")
			if f.Masquerade != want {
				t.Errorf("masqueradeAll %v, %v: Masquerade %v, want %v", all, f.Key, f.Masquerade, want)
			}
		}
	}
	s.ExternalTrafficPolicyLocal = true
	// NodePortAddresses restricts NodePort frontends.
	st := testState(s)
	st.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	fes, _ = PlanService(st, s, nodeAddrs)
	for _, f := range fes {
		if f.Key.Port == 30080 && f.Key.Addr.String() != "127.0.0.1" {
			t.Errorf("NodePort on %s despite NodePortAddresses", f.Key.Addr)
		}
	}
}

func TestPlanNoEndpointsStillHasFrontend(t *testing.T) {
	s := webService()
	fes, _ := PlanService(testState(s), s, nil)
	if len(fes) != 2 || len(fes[0].Active) != 0 || len(fes[1].Active) != 0 {
		t.Fatalf("a port without endpoints must keep a frontend with count 0 (to refuse): %+v", fes)
	}
	e := newEntries()
	if err := render(e, fes, nil, newIDs(100), nil); err != nil {
		t.Fatal(err)
	}
	head := e.Services[svcKey{Addr: addrToBE(netip.MustParseAddr("10.96.0.10")), Port: htons(80), Proto: protoTCP, Scope: ScopeInt}]
	if head.Count != 0 || head.RevNatId == 0 {
		t.Errorf("slot 0 = %+v", head)
	}
}

// recorder is a mapWriter over plain maps that checks, after every single write, that a BPF
// reader could not see a half-written service.
type recorder struct {
	t   *testing.T
	e   *Entries
	ops int
}

func (r *recorder) check(op string) {
	r.ops++
	for k, v := range r.e.Services {
		if k.Slot != 0 {
			continue
		}
		for s := 1; s <= int(v.Count)+int(v.Qcount); s++ {
			sk := k
			sk.Slot = uint16(s)
			sv, ok := r.e.Services[sk]
			if !ok {
				r.t.Fatalf("after %s: %s publishes count %d+%d but slot %d is missing", op, describe(k), v.Count, v.Qcount, s)
			}
			if _, ok := r.e.Backends[sv.BackendId]; !ok {
				r.t.Fatalf("after %s: %s slot %d points at missing backend %d", op, describe(k), s, sv.BackendId)
			}
		}
		if v.Flags&flagRanges != 0 {
			found := false
			for rk := range r.e.Ranges {
				found = found || rk.RevNatId == v.RevNatId
			}
			if !found {
				r.t.Fatalf("after %s: %s restricts sources but has no range", op, describe(k))
			}
		}
		if _, ok := r.e.RevNat[v.RevNatId]; !ok {
			r.t.Fatalf("after %s: %s has no rev-NAT entry %d", op, describe(k), v.RevNatId)
		}
	}
}

func (r *recorder) putService(k svcKey, v svcValue) error {
	r.e.Services[k] = v
	r.check("put " + describe(k))
	return nil
}
func (r *recorder) delService(k svcKey) error {
	delete(r.e.Services, k)
	r.check("delete " + describe(k))
	return nil
}
func (r *recorder) putBackend(id uint32, v backendVal) error {
	r.e.Backends[id] = v
	r.check("put backend")
	return nil
}
func (r *recorder) delBackend(id uint32) error {
	delete(r.e.Backends, id)
	r.check("delete backend")
	return nil
}
func (r *recorder) putRevNat(id uint16, v revNatValue) error {
	r.e.RevNat[id] = v
	r.check("put revnat")
	return nil
}
func (r *recorder) putRange(k rangeKey) error {
	r.e.Ranges[k] = 1
	r.check("put range")
	return nil
}
func (r *recorder) delRange(k rangeKey) error {
	delete(r.e.Ranges, k)
	r.check("delete range")
	return nil
}
func (r *recorder) delRevNat(id uint16) error {
	delete(r.e.RevNat, id)
	r.check("delete revnat")
	return nil
}

// TestApplyNeverHalfWritten drives random state changes through apply, checking the reader
// invariant after every write, that the result equals what was wanted, and that applying the
// same state again writes nothing.
func TestApplyNeverHalfWritten(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	kernel := newEntries()
	have := newEntries()
	t2 := newIDs(1 << 16)
	for round := 0; round < 200; round++ {
		st := randomState(rng)
		want := newEntries()
		for _, s := range st.Services {
			fes, local := PlanService(st, s, nil)
			if err := render(want, fes, local, t2, nil); err != nil && !errors.Is(err, errDuplicateFrontend) {
				t.Fatal(err)
			}
		}
		r := &recorder{t: t, e: kernel}
		if _, err := apply(r, have, want); err != nil {
			t.Fatal(err)
		}
		t2.keep(want)
		if fmt.Sprint(kernel) != fmt.Sprint(want) || fmt.Sprint(have) != fmt.Sprint(want) {
			t.Fatalf("round %d: maps differ from wanted:\nkernel %v\nhave %v\nwant %v", round, kernel, have, want)
		}
		res, err := apply(r, have, copyEntries(want))
		if err != nil || res.objects != 0 {
			t.Fatalf("round %d: re-apply wrote %d objects (err %v), want 0", round, res.objects, err)
		}
	}
}

func TestRenderDuplicateFrontend(t *testing.T) {
	a := webService(ep("10.244.1.5", "node1", true, true, false))
	b := webService(ep("10.244.1.6", "node1", true, true, false))
	b.Key.Name = "other"
	st := testState(a, b)
	e, ids := newEntries(), newIDs(100)
	for _, s := range st.Services {
		fes, local := PlanService(st, s, nil)
		err := render(e, fes, local, ids, nil)
		if s.Key.Name == "web" && !errors.Is(err, errDuplicateFrontend) {
			t.Fatalf("second service on the same VIP: err %v, want errDuplicateFrontend", err)
		}
	}
	// The first service in order ("other") keeps the frontend.
	slot1 := svcKey{Addr: addrToBE(vip.Addr()), Port: htons(80), Proto: protoTCP, Scope: ScopeInt, Slot: 1}
	if be := e.Backends[e.Services[slot1].BackendId]; addrFromBE(be.Addr).String() != "10.244.1.6" {
		t.Errorf("frontend went to %v", addrFromBE(be.Addr))
	}
}

func TestApplyRemovesStraySlots(t *testing.T) {
	have := newEntries()
	f := svcKey{Addr: addrToBE(netip.MustParseAddr("10.96.0.1")), Port: htons(53), Proto: protoUDP, Scope: ScopeInt}
	have.Services[f] = svcValue{Count: 0, RevNatId: 1}
	have.RevNat[1] = revNatValue{}
	stray := f
	stray.Slot = 7
	have.Services[stray] = svcValue{BackendId: 9}
	have.Backends[9] = backendVal{}
	kernel := copyEntries(have)
	want := newEntries()
	want.Services[f] = svcValue{Count: 0, RevNatId: 1}
	want.RevNat[1] = revNatValue{}
	res, err := apply(&recorder{t: t, e: kernel}, have, want)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := kernel.Services[stray]; ok || len(kernel.Backends) != 0 {
		t.Errorf("stray slot or backend left: %v", kernel)
	}
	if len(res.removedBackends) != 1 {
		t.Errorf("removed backends = %v", res.removedBackends)
	}
}

func TestEncoding(t *testing.T) {
	a := netip.MustParseAddr("10.96.0.10")
	if addrFromBE(addrToBE(a)) != a || ntohs(htons(8080)) != 8080 {
		t.Fatal("round trip failed")
	}
	// Memory order must be network order, as the BPF side reads packet bytes.
	v := addrToBE(a)
	b := [4]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	if b != [4]byte{10, 96, 0, 10} {
		t.Errorf("address bytes %v", b)
	}
	p := htons(0x1f90)
	if byte(p) != 0x1f || byte(p>>8) != 0x90 {
		t.Errorf("port bytes %x", p)
	}
}

// randomState returns a small random state: services sharing VIPs, endpoints, LB IPs with
// source ranges.
func randomState(rng *rand.Rand) *model.State {
	var svcs []*model.Service
	seen := map[int]bool{}
	for i := 0; i < 1+rng.Intn(4); i++ {
		id := rng.Intn(5)
		if seen[id] {
			continue
		}
		seen[id] = true
		var eps []model.Endpoint
		for j := 0; j < rng.Intn(6); j++ {
			ip := fmt.Sprintf("10.244.%d.%d", 1+rng.Intn(2), 2+rng.Intn(8))
			ready := rng.Intn(3) > 0
			eps = append(eps, ep(ip, "node1", ready, ready || rng.Intn(2) == 0, !ready))
		}
		s := webService(eps...)
		s.Key.Name = fmt.Sprintf("svc%d", id)
		s.ClusterIPs = []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.96.0.%d", 10+id))}
		if rng.Intn(2) == 0 {
			s.Type = model.LoadBalancer
			s.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr(fmt.Sprintf("172.31.0.%d", 50+id))}
			for j := 0; j < rng.Intn(3); j++ {
				s.LoadBalancerSourceRanges = append(s.LoadBalancerSourceRanges, netip.MustParsePrefix(fmt.Sprintf("192.168.%d.0/%d", rng.Intn(3), 16+8*rng.Intn(2))))
			}
		}
		svcs = append(svcs, s)
	}
	return testState(svcs...)
}
