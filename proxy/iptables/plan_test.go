package iptables

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/proxy/model"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(want) != got {
		t.Fatalf("%s differs from the rendering (run go test -update after checking):\n--- got\n%s", path, got)
	}
}

func TestGolden(t *testing.T) {
	st := fixtureState()
	nat, filter := Render(st)
	golden(t, "fixture.nat", nat)
	golden(t, "fixture.filter", filter)

	// A partial sync after one endpoint left "web" and "sticky" was removed.
	pl := NewPlanner(Config{})
	first := pl.Plan(nil, st, model.Changes{}, true)
	next := fixtureState()
	web := next.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	web.Ports[0].Endpoints = web.Ports[0].Endpoints[:2]
	var kept []*model.Service
	for _, s := range next.Services {
		if s.Key.Name != "sticky" {
			kept = append(kept, s)
		}
	}
	next.Services = kept
	p := pl.Plan(first.Written, next, model.Diff(st, next), false)
	golden(t, "partial.nat", string(p.NAT))
	golden(t, "partial.filter", string(p.Filter))
}

// apply loads restore input into rs like the kernel would, failing the test on error.
func apply(t *testing.T, rs *tracer.Ruleset, p *Plan) {
	t.Helper()
	if err := rs.Restore(string(p.Filter)); err != nil {
		t.Fatalf("filter: %v\n%s", err, p.Filter)
	}
	if err := rs.Restore(string(p.NAT)); err != nil {
		t.Fatalf("nat: %v\n%s", err, p.NAT)
	}
}

func fresh(t *testing.T, st *model.State) string {
	t.Helper()
	nat, filter := Render(st)
	rs, err := tracer.Parse(filter, nat, JumpRulesRestore())
	if err != nil {
		t.Fatal(err)
	}
	return rs.Dump()
}

// mutations returns a sequence of states, each changing services in a different way.
func mutations() []func(st *model.State) {
	key := func(n string) model.ServiceKey { return model.ServiceKey{Namespace: "default", Name: n} }
	return []func(st *model.State){
		func(st *model.State) { // endpoint removed
			s := st.Service(key("web"))
			s.Ports[0].Endpoints = s.Ports[0].Endpoints[1:]
		},
		func(st *model.State) { // service removed
			var kept []*model.Service
			for _, s := range st.Services {
				if s.Key != key("sticky") {
					kept = append(kept, s)
				}
			}
			st.Services = kept
		},
		func(st *model.State) { // service added
			st.Services = append(st.Services, &model.Service{Key: key("new"), Type: model.NodePort, ClusterIPs: addrs("10.96.1.1"),
				Ports: []model.ServicePort{{Protocol: model.UDP, Port: 53, NodePort: 30053, Endpoints: []model.Endpoint{ep("10.244.1.99", 53, "node1")}}}})
			st.Sort()
		},
		func(st *model.State) { // policy flipped: ETP Local -> Cluster, local chain goes
			st.Service(key("np-local")).ExternalTrafficPolicyLocal = false
		},
		func(st *model.State) { // endpoints gone: REJECT instead of chains
			st.Service(key("lb")).Ports[0].Endpoints = nil
		},
		func(st *model.State) { // first endpoint
			st.Service(key("dns")).Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.53", 53, "node2")}
		},
		func(st *model.State) { // affinity switched on
			st.Service(key("web")).AffinityTimeout = 10e9
		},
		func(st *model.State) {}, // nothing
	}
}

// TestPartialSyncEqualsFullSync applies a full sync then partial syncs for every mutation to
// a model kernel and checks the result equals a full sync of the final state, and that a
// partial sync writes only the changed services' chains.
func TestPartialSyncEqualsFullSync(t *testing.T) {
	pl := NewPlanner(Config{})
	st := fixtureState()
	rs := tracer.New()
	p := pl.Plan(nil, st, model.Changes{}, true)
	apply(t, rs, p)
	if err := rs.Restore(JumpRulesRestore()); err != nil {
		t.Fatal(err)
	}
	if got, want := rs.Dump(), fresh(t, st); got != want {
		t.Fatalf("full sync differs from Render")
	}
	written := p.Written
	for i, mut := range mutations() {
		next := cloneState(st)
		mut(next)
		ch := model.Diff(st, next)
		p := pl.Plan(written, next, ch, false)
		if p.Full {
			t.Fatalf("step %d: planned full", i)
		}
		present := 0
		for k := range ch.Services {
			if next.Service(k) != nil {
				present++
			}
		}
		if p.ServicesWritten != present {
			t.Fatalf("step %d: wrote %d services, want the %d changed ones", i, p.ServicesWritten, present)
		}
		// Chains of unchanged services are not mentioned.
		for _, s := range next.Services {
			if _, changed := ch.Services[s.Key]; changed {
				continue
			}
			for _, c := range written.services[s.Key] {
				if strings.Contains(string(p.NAT), ":"+c+" ") {
					t.Fatalf("step %d: partial sync rewrites %s of unchanged %s", i, c, s.Key)
				}
			}
		}
		if strings.Contains(string(p.NAT), ChainCanary) {
			t.Fatalf("step %d: a partial sync recreates the canary", i)
		}
		// Step 0 (an endpoint left, the service keeps endpoints) and the last step (nothing
		// changed) leave the dispatch chains as they are, so they are not written.
		if i == 0 && (strings.Contains(string(p.NAT), ":"+ChainServices) || p.Filter != nil || p.NAT == nil) {
			t.Fatalf("step %d: endpoint change rewrote the dispatch chains or wrote nothing:\n%s%s", i, p.NAT, p.Filter)
		}
		if i == len(mutations())-1 && (p.NAT != nil || p.Filter != nil || p.Rules != 0) {
			t.Fatalf("step %d: nothing changed but the plan writes %d rules:\n%s%s", i, p.Rules, p.NAT, p.Filter)
		}
		if i == 1 && !strings.Contains(string(p.NAT), ":"+ChainServices) {
			t.Fatalf("step %d: a removed service must be removed from the dispatch chain", i)
		}
		apply(t, rs, p)
		if got, want := rs.Dump(), fresh(t, next); got != want {
			t.Fatalf("step %d: after partial sync the ruleset differs from a full sync:\n--- partial\n%s\n--- full\n%s", i, got, want)
		}
		st, written = next, p.Written
	}
}

// TestFullSyncDeletesOrphans: after a restart the backend only knows the kernel's chains; a
// full sync deletes those it does not write, and keeps foreign chains.
func TestFullSyncDeletesOrphans(t *testing.T) {
	old := fixtureState()
	rs, err := tracer.Parse("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	apply(t, rs, NewPlanner(Config{}).Plan(nil, old, model.Changes{}, true))
	if err := rs.Restore(JumpRulesRestore()); err != nil {
		t.Fatal(err)
	}
	// An orphan filter chain from an older version.
	if err := rs.Restore("*filter\n:SVCPROXY-OLD - [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	next := fixtureState()
	next.Services = next.Services[:2]
	kernel := map[string][]string{}
	for _, tbl := range []string{"nat", "filter"} {
		for name := range rs.Tables[tbl].Chains {
			kernel[tbl] = append(kernel[tbl], name)
		}
	}
	pl := NewPlanner(Config{})
	apply(t, rs, pl.Plan((*Written)(nil).WithKernelChains(kernel), next, model.Changes{}, true))
	nat, filter := Render(next)
	want, err := tracer.Parse("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n", nat, filter, JumpRulesRestore())
	if err != nil {
		t.Fatal(err)
	}
	if rs.Dump() != want.Dump() {
		t.Fatalf("full sync left orphans:\n%s\nwant\n%s", rs.Dump(), want.Dump())
	}
}

func TestStaleConntrack(t *testing.T) {
	prev := fixtureState()
	next := cloneState(prev)
	dns := next.Service(model.ServiceKey{Namespace: "default", Name: "dns"})
	dns.Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.53", 53, "node2")} // first endpoint
	np := next.Service(model.ServiceKey{Namespace: "default", Name: "np-empty"})
	np.Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.60", 5000, "node2")}
	got := StaleConntrack(prev, next, IPv4, model.Diff(prev, next).Services)
	want := []ConntrackFlush{
		{OrigDstPort: 30500},
		{OrigDst: netip.MustParseAddr("10.96.0.22"), OrigDstPort: 5000},
		{OrigDst: netip.MustParseAddr("10.96.0.53"), OrigDstPort: 53},
	}
	if !equalFlushes(got, want) {
		t.Fatalf("first endpoints: got %+v want %+v", got, want)
	}
	// The endpoint leaves again; TCP endpoints leaving flush only their unanswered connection
	// attempts (SYN_SENT), never established connections.
	third := cloneState(next)
	third.Service(model.ServiceKey{Namespace: "default", Name: "np-empty"}).Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.61", 5000, "node2")}
	third.Service(model.ServiceKey{Namespace: "default", Name: "web"}).Ports[0].Endpoints = nil
	got = StaleConntrack(next, third, IPv4, model.Diff(next, third).Services)
	old := netip.MustParseAddr("10.244.2.60")
	webVIP := netip.MustParseAddr("10.96.0.10")
	want = []ConntrackFlush{
		{OrigDstPort: 30500, ReplySrc: old, ReplySrcPort: 5000},
		{OrigDst: netip.MustParseAddr("10.96.0.22"), OrigDstPort: 5000, ReplySrc: old, ReplySrcPort: 5000},
		{TCPState: "SYN_SENT", OrigDst: webVIP, OrigDstPort: 80, ReplySrc: netip.MustParseAddr("10.244.1.10"), ReplySrcPort: 8080},
		{TCPState: "SYN_SENT", OrigDst: webVIP, OrigDstPort: 80, ReplySrc: netip.MustParseAddr("10.244.1.11"), ReplySrcPort: 8080},
		{TCPState: "SYN_SENT", OrigDst: webVIP, OrigDstPort: 80, ReplySrc: netip.MustParseAddr("10.244.2.10"), ReplySrcPort: 8080},
	}
	if !equalFlushes(got, want) {
		t.Fatalf("endpoint removed: got %+v want %+v", got, want)
	}
	if a := strings.Join(want[1].Args(IPv4), " "); a != "-D -p udp --orig-dst 10.96.0.22 --orig-port-dst 5000 --reply-src 10.244.2.60 --reply-port-src 5000" {
		t.Fatalf("args %q", a)
	}
	if a := strings.Join(want[2].Args(IPv4), " "); a != "-D -p tcp --state SYN_SENT --orig-dst 10.96.0.10 --orig-port-dst 80 --reply-src 10.244.1.10 --reply-port-src 8080" {
		t.Fatalf("args %q", a)
	}
	if got := StaleConntrack(nil, third, IPv4, nil); len(got) != 0 {
		t.Fatalf("no previous state: %v", got)
	}
}

func equalFlushes(a, b []ConntrackFlush) bool {
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

// cloneState deep-copies the parts of a state the tests mutate.
func cloneState(st *model.State) *model.State {
	out := *st
	out.Services = nil
	for _, s := range st.Services {
		c := *s
		c.Ports = nil
		for _, p := range s.Ports {
			p.Endpoints = append([]model.Endpoint(nil), p.Endpoints...)
			c.Ports = append(c.Ports, p)
		}
		out.Services = append(out.Services, &c)
	}
	return &out
}

func TestLargeStateDropsEndpointComments(t *testing.T) {
	small, _ := Render(bigState(10, 10))
	big, _ := Render(bigState(101, 10))
	if !strings.Contains(small, " -> 10.244.") {
		t.Fatal("small state: endpoint comments missing")
	}
	if strings.Contains(big, " -> ") {
		t.Fatal("state over LargeStateEndpoints: endpoint comments present")
	}
	if _, err := tracer.Parse(big); err != nil {
		t.Fatal(err)
	}
}

func TestOptionalChainDeletedWhenUnneeded(t *testing.T) {
	pl := NewPlanner(Config{})
	st := fixtureState()
	st.ClusterCIDRs = append(st.ClusterCIDRs, netip.MustParsePrefix("10.250.0.0/16"))
	rs := tracer.New()
	p := pl.Plan(nil, st, model.Changes{}, true)
	apply(t, rs, p)
	if rs.Chain("nat", ChainMasqNonPod) == nil {
		t.Fatal("two cluster CIDRs: no " + ChainMasqNonPod)
	}
	next := fixtureState()
	apply(t, rs, pl.Plan(p.Written, next, model.Diff(st, next), false))
	if rs.Chain("nat", ChainMasqNonPod) != nil {
		t.Fatal(ChainMasqNonPod + " left behind")
	}
	if err := rs.Restore(JumpRulesRestore()); err != nil {
		t.Fatal(err)
	}
	if rs.Dump() != fresh(t, next) {
		t.Fatal("ruleset differs from a fresh full sync")
	}
}

// TestChunkedPlansEqualUnchunked applies chunked full and partial plans in order (chunks, then
// the final nat input) and compares with a single-input full render.
func TestChunkedPlansEqualUnchunked(t *testing.T) {
	pl := NewPlanner(Config{ChunkRules: 7})
	st := fixtureState()
	rs := tracer.New()
	applyChunked := func(p *Plan) {
		t.Helper()
		if err := rs.Restore(string(p.Filter)); err != nil {
			t.Fatal(err)
		}
		for i, c := range p.NATChunks {
			if strings.Contains(string(c), "SVCPROXY-SERVICES") {
				t.Fatalf("chunk %d touches the dispatch chain", i)
			}
			if err := rs.Restore(string(c)); err != nil {
				t.Fatalf("chunk %d: %v\n%s", i, err, c)
			}
		}
		if err := rs.Restore(string(p.NAT)); err != nil {
			t.Fatalf("final nat: %v\n%s", err, p.NAT)
		}
	}
	p := pl.Plan(nil, st, model.Changes{}, true)
	if len(p.NATChunks) < 3 {
		t.Fatalf("%d chunks, want several", len(p.NATChunks))
	}
	applyChunked(p)
	if err := rs.Restore(JumpRulesRestore()); err != nil {
		t.Fatal(err)
	}
	if rs.Dump() != fresh(t, st) {
		t.Fatal("chunked full sync differs from a single-input one")
	}
	written := p.Written
	for i, mut := range mutations() {
		next := cloneState(st)
		mut(next)
		p := pl.Plan(written, next, model.Diff(st, next), false)
		applyChunked(p)
		if rs.Dump() != fresh(t, next) {
			t.Fatalf("step %d: chunked partial sync differs from a full render", i)
		}
		st, written = next, p.Written
	}
}
