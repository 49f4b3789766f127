package iptables

import (
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/proxy/model"
)

var gatewayIP = netip.MustParseAddr("10.244.1.1") // the node's address on the pod bridge

func load(t *testing.T, st *model.State) *tracer.Ruleset {
	t.Helper()
	nat, filter := Render(st)
	rs, err := tracer.Parse(nat, filter, JumpRulesRestore())
	if err != nil {
		t.Fatalf("tracer cannot load the rendered rules: %v", err)
	}
	return rs
}

type pkt struct {
	src, dst string
	proto    string
	port     uint16
	local    bool
	ct       string
	recent   map[string]map[netip.Addr]int
}

func run(t *testing.T, rs *tracer.Ruleset, p pkt) tracer.Result {
	t.Helper()
	proto := p.proto
	if proto == "" {
		proto = "tcp"
	}
	res, err := rs.Trace(tracer.Packet{
		Src: netip.MustParseAddr(p.src), Dst: netip.MustParseAddr(p.dst), Proto: proto, DPort: p.port,
		FromLocal: p.local, LocalAddrs: []netip.Addr{nodeIP, gatewayIP}, CtState: p.ct, Recent: p.recent,
	})
	if err != nil {
		t.Fatalf("trace %+v: %v", p, err)
	}
	if sum := res.Prob(func(tracer.Outcome) bool { return true }); math.Abs(sum-1) > 1e-9 {
		t.Fatalf("trace %+v: outcome probabilities sum to %v:\n%s", p, sum, res)
	}
	return res
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// wantTargets checks that the packet is accepted and spread uniformly over want, with the
// given masquerade verdict for each target.
func wantTargets(t *testing.T, res tracer.Result, masq map[string]bool) {
	t.Helper()
	got := res.Targets()
	if len(got) != len(masq) {
		t.Fatalf("targets %v, want %v:\n%s", got, masq, res)
	}
	for ap, m := range masq {
		p, ok := got[netip.MustParseAddrPort(ap)]
		if !ok || !near(p, 1/float64(len(masq))) {
			t.Fatalf("target %s probability %v (present %v), want %v:\n%s", ap, p, ok, 1/float64(len(masq)), res)
		}
		for _, o := range res.Outcomes {
			if o.DNAT.String() == ap && o.Masquerade != m {
				t.Fatalf("target %s masquerade=%v, want %v:\n%s", ap, o.Masquerade, m, res)
			}
		}
	}
}

func wantVerdict(t *testing.T, res tracer.Result, v tracer.Verdict, rejectWith string) {
	t.Helper()
	if len(res.Outcomes) != 1 || res.Outcomes[0].Verdict != v || res.Outcomes[0].RejectWith != rejectWith || res.Outcomes[0].DNAT.IsValid() {
		t.Fatalf("want only %s %s without DNAT, got:\n%s", v, rejectWith, res)
	}
}

func wantUntouched(t *testing.T, res tracer.Result) {
	t.Helper()
	if len(res.Outcomes) != 1 || res.Outcomes[0].Verdict != tracer.Accept || res.Outcomes[0].DNAT.IsValid() || res.Outcomes[0].Masquerade {
		t.Fatalf("want the packet accepted untranslated, got:\n%s", res)
	}
}

const remotePod = "10.244.2.99"

func TestClusterIPUniformSpread(t *testing.T) {
	rs := load(t, fixtureState())
	// From a pod on another node: no masquerade, 1/3 each.
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.10", port: 80}),
		map[string]bool{"10.244.1.10:8080": false, "10.244.1.11:8080": false, "10.244.2.10:8080": false})
	// Wrong port or protocol: not a service.
	wantUntouched(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.10", port: 81}))
	wantUntouched(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.10", port: 80, proto: "udp"}))

	// Every size from 1 to 13 endpoints is uniform.
	for n := 1; n <= 13; n++ {
		st := fixtureState()
		s := st.Service(model.ServiceKey{Namespace: "default", Name: "web"})
		s.Ports[0].Endpoints = nil
		want := map[string]bool{}
		for i := range n {
			e := ep("10.244.3.1", uint16(9000+i), "node3")
			s.Ports[0].Endpoints = append(s.Ports[0].Endpoints, e)
			want[e.String()] = false
		}
		wantTargets(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.10", port: 80}), want)
	}
}

func TestMasqueradeOutsideClusterCIDR(t *testing.T) {
	rs := load(t, fixtureState())
	all := map[string]bool{"10.244.1.10:8080": true, "10.244.1.11:8080": true, "10.244.2.10:8080": true}
	// A client outside the cluster CIDR reaching the VIP (routed to this node).
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: "10.96.0.10", port: 80}), all)
	// A process on the node.
	wantTargets(t, run(t, rs, pkt{src: nodeIP.String(), dst: "10.96.0.10", port: 80, local: true}), all)

	st := fixtureState()
	st.MasqueradeAll = true
	wantTargets(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.10", port: 80}), all)

	// Two cluster CIDRs use the SVCPROXY-MASQ-NONPOD chain.
	st = fixtureState()
	st.ClusterCIDRs = append(st.ClusterCIDRs, netip.MustParsePrefix("10.250.0.0/16"))
	rs = load(t, st)
	none := map[string]bool{"10.244.1.10:8080": false, "10.244.1.11:8080": false, "10.244.2.10:8080": false}
	wantTargets(t, run(t, rs, pkt{src: "10.250.0.5", dst: "10.96.0.10", port: 80}), none)
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.10", port: 80}), none)
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: "10.96.0.10", port: 80}), all)
}

func TestHairpin(t *testing.T) {
	rs := load(t, fixtureState())
	// Endpoint 10.244.1.10 reaching its own service: masqueraded only when it picks itself.
	wantTargets(t, run(t, rs, pkt{src: "10.244.1.10", dst: "10.96.0.10", port: 80}),
		map[string]bool{"10.244.1.10:8080": true, "10.244.1.11:8080": false, "10.244.2.10:8080": false})
}

func TestRejectWithoutEndpoints(t *testing.T) {
	st := fixtureState()
	rs := load(t, st)
	wantVerdict(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.53", port: 53, proto: "udp"}), tracer.Reject, "icmp-port-unreachable")
	// From the node itself too (filter OUTPUT).
	wantVerdict(t, run(t, rs, pkt{src: nodeIP.String(), dst: "10.96.0.53", port: 53, proto: "udp", local: true}), tracer.Reject, "icmp-port-unreachable")
	// The node port of a service without endpoints.
	wantVerdict(t, run(t, rs, pkt{src: outsideIP.String(), dst: nodeIP.String(), port: 30500, proto: "udp"}), tracer.Reject, "icmp-port-unreachable")
	// TCP gets a reset.
	st.Service(model.ServiceKey{Namespace: "default", Name: "web"}).Ports[0].Endpoints = nil
	wantVerdict(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.10", port: 80}), tracer.Reject, "tcp-reset")
	// Endpoints that are neither ready nor serving count as none.
	st = fixtureState()
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "draining"})
	s.Ports[0].Endpoints = s.Ports[0].Endpoints[1:]
	wantVerdict(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.50", port: 8080}), tracer.Reject, "tcp-reset")
}

func TestSCTPAndUDP(t *testing.T) {
	rs := load(t, fixtureState())
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.53", port: 9999, proto: "sctp"}),
		map[string]bool{"10.244.2.53:9999": false})
	st := fixtureState()
	st.Service(model.ServiceKey{Namespace: "default", Name: "dns"}).Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.54", 53, "node2")}
	wantTargets(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.53", port: 53, proto: "udp"}),
		map[string]bool{"10.244.2.54:53": false})
}

func TestExternalTrafficPolicyLocal(t *testing.T) {
	rs := load(t, fixtureState())
	local := map[string]bool{"10.244.1.20:8080": false}
	// External client on a node port and on the external IP: local endpoint only, client IP kept.
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: nodeIP.String(), port: 30080}), local)
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: "172.31.0.100", port: 80}), local)
	// A pod reaching the external IP goes cluster-wide, like kube-proxy.
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "172.31.0.100", port: 80}),
		map[string]bool{"10.244.1.20:8080": false, "10.244.2.20:8080": false})
	// A process on the node reaching the node port goes cluster-wide, masqueraded.
	wantTargets(t, run(t, rs, pkt{src: nodeIP.String(), dst: nodeIP.String(), port: 30080, local: true}),
		map[string]bool{"10.244.1.20:8080": true, "10.244.2.20:8080": true})
	// The cluster IP is not affected by the external policy.
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.20", port: 80}),
		map[string]bool{"10.244.1.20:8080": false, "10.244.2.20:8080": false})

	// No local endpoint: external traffic dropped, pods still served.
	wantVerdict(t, run(t, rs, pkt{src: outsideIP.String(), dst: nodeIP.String(), port: 30081}), tracer.Drop, "")
	wantTargets(t, run(t, rs, pkt{src: "10.244.1.77", dst: nodeIP.String(), port: 30081}),
		map[string]bool{"10.244.2.25:8080": false})
}

func TestExternalIPClusterPolicy(t *testing.T) {
	st := fixtureState()
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	s.ExternalIPs = addrs("172.31.0.101")
	rs := load(t, st)
	all := map[string]bool{"10.244.1.10:8080": true, "10.244.1.11:8080": true, "10.244.2.10:8080": true}
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: "172.31.0.101", port: 80}), all)
	// No endpoints: REJECT on the external IP too.
	s.Ports[0].Endpoints = nil
	wantVerdict(t, run(t, load(t, st), pkt{src: outsideIP.String(), dst: "172.31.0.101", port: 80}), tracer.Reject, "tcp-reset")
}

func TestInternalTrafficPolicyLocal(t *testing.T) {
	rs := load(t, fixtureState())
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.60", port: 80}), map[string]bool{"10.244.1.60:80": false})
	wantVerdict(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.61", port: 80}), tracer.Drop, "")
	wantVerdict(t, run(t, rs, pkt{src: nodeIP.String(), dst: "10.96.0.61", port: 80, local: true}), tracer.Drop, "")
}

func TestSessionAffinity(t *testing.T) {
	st := fixtureState()
	rs := load(t, st)
	res := run(t, rs, pkt{src: remotePod, dst: "10.96.0.40", port: 80})
	wantTargets(t, res, map[string]bool{"10.244.1.50:80": false, "10.244.2.50:80": false})
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "sticky"})
	for _, o := range res.Outcomes {
		e := model.Endpoint{IP: o.DNAT.Addr(), Port: o.DNAT.Port()}
		name := EndpointChainName(s, &s.Ports[0], e)
		if len(o.RecentSet) != 1 || o.RecentSet[0] != name {
			t.Fatalf("outcome %s records %v, want [%s]", o.DNAT, o.RecentSet, name)
		}
		// The same client within the timeout sticks to that endpoint.
		src := netip.MustParseAddr(remotePod)
		again := run(t, rs, pkt{src: remotePod, dst: "10.96.0.40", port: 80,
			recent: map[string]map[netip.Addr]int{name: {src: 299}}})
		if got := again.Targets(); len(got) != 1 || !near(got[o.DNAT], 1) {
			t.Fatalf("sticky client went to %v, want only %s:\n%s", got, o.DNAT, again)
		}
		// After the timeout it is balanced again.
		late := run(t, rs, pkt{src: remotePod, dst: "10.96.0.40", port: 80,
			recent: map[string]map[netip.Addr]int{name: {src: 300}}})
		wantTargets(t, late, map[string]bool{"10.244.1.50:80": false, "10.244.2.50:80": false})
		// Another client is not affected.
		other := run(t, rs, pkt{src: "10.244.2.98", dst: "10.96.0.40", port: 80,
			recent: map[string]map[netip.Addr]int{name: {src: 1}}})
		wantTargets(t, other, map[string]bool{"10.244.1.50:80": false, "10.244.2.50:80": false})
	}
}

func TestTerminatingFallbackAndTopology(t *testing.T) {
	st := fixtureState()
	rs := load(t, st)
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.50", port: 8080}), map[string]bool{"10.244.2.21:8080": false})
	// A ready endpoint appearing wins over the terminating one.
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "draining"})
	s.Ports[0].Endpoints = append(s.Ports[0].Endpoints, ep("10.244.2.23", 8080, "node2"))
	st.Sort()
	wantTargets(t, run(t, load(t, st), pkt{src: remotePod, dst: "10.96.0.50", port: 8080}), map[string]bool{"10.244.2.23:8080": false})
	// Topology hints: zone z1 only.
	wantTargets(t, run(t, rs, pkt{src: remotePod, dst: "10.96.0.70", port: 80}), map[string]bool{"10.244.1.30:80": false})
}

func TestLoadBalancerSourceRanges(t *testing.T) {
	rs := load(t, fixtureState())
	wantTargets(t, run(t, rs, pkt{src: "172.31.0.50", dst: "172.31.0.150", port: 443}), map[string]bool{"10.244.1.40:8443": false})
	wantVerdict(t, run(t, rs, pkt{src: "172.31.0.200", dst: "172.31.0.150", port: 443}), tracer.Drop, "")
	// Source ranges do not apply to the node port or the cluster IP.
	wantTargets(t, run(t, rs, pkt{src: "172.31.0.200", dst: nodeIP.String(), port: 30443}), map[string]bool{"10.244.1.40:8443": false})
	wantTargets(t, run(t, rs, pkt{src: "172.31.0.200", dst: "10.96.0.30", port: 443}), map[string]bool{"10.244.1.40:8443": true})
	// The health check node port is accepted.
	wantUntouched(t, run(t, rs, pkt{src: "172.31.0.200", dst: nodeIP.String(), port: 32000}))
}

func TestNodePortOnlyOnLocalAddresses(t *testing.T) {
	st := fixtureState()
	rs := load(t, st)
	local := map[string]bool{"10.244.1.20:8080": false}
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: nodeIP.String(), port: 30080}), local)
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: gatewayIP.String(), port: 30080}), local)
	// Not a local address: not a node port.
	wantUntouched(t, run(t, rs, pkt{src: outsideIP.String(), dst: "172.31.0.99", port: 30080}))
	// Never on loopback.
	wantUntouched(t, run(t, rs, pkt{src: "127.0.0.1", dst: "127.0.0.1", port: 30080, local: true}))

	st.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("172.31.0.0/24")}
	rs = load(t, st)
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: nodeIP.String(), port: 30080}), local)
	wantUntouched(t, run(t, rs, pkt{src: outsideIP.String(), dst: gatewayIP.String(), port: 30080}))
}

func TestConntrackInvalidDropped(t *testing.T) {
	rs := load(t, fixtureState())
	wantVerdict(t, run(t, rs, pkt{src: outsideIP.String(), dst: "10.244.2.10", port: 8080, ct: "INVALID"}), tracer.Drop, "")
	wantUntouched(t, run(t, rs, pkt{src: outsideIP.String(), dst: "10.244.2.10", port: 8080, ct: "ESTABLISHED"}))
}

func TestChainNames(t *testing.T) {
	st := fixtureState()
	nat, filter := Render(st)
	for _, l := range strings.Split(nat+filter, "\n") {
		if strings.HasPrefix(l, ":") {
			name := strings.Fields(l[1:])[0]
			if len(name) > 27 || !strings.HasPrefix(name, ChainPrefix) {
				t.Errorf("chain %q: want the %s prefix and at most 27 characters", name, ChainPrefix)
			}
		}
	}
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	c1, _, _, _ := ServiceChainNames(s, &s.Ports[0])
	if !strings.Contains(nat, ":"+c1+" ") || len(c1) != len(kindCluster)+16 {
		t.Fatalf("cluster chain %s not rendered", c1)
	}
}

func TestMasqMarkConfigurable(t *testing.T) {
	st := fixtureState()
	p := NewPlanner(Config{MasqMark: 0x10000}).Plan(nil, st, model.Changes{}, true)
	if strings.Contains(string(p.NAT)+string(p.Filter), "0x8000") || !strings.Contains(string(p.NAT), "--or-mark 0x10000") {
		t.Fatalf("mark 0x10000 not used throughout:\n%s", p.NAT)
	}
	rs, err := tracer.Parse(string(p.NAT), string(p.Filter), JumpRulesRestore())
	if err != nil {
		t.Fatal(err)
	}
	wantTargets(t, run(t, rs, pkt{src: outsideIP.String(), dst: "10.96.0.40", port: 80}),
		map[string]bool{"10.244.1.50:80": true, "10.244.2.50:80": true})
}

func TestIPv6Render(t *testing.T) {
	st := &model.State{
		NodeName:     "node1",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/56")},
		Services: []*model.Service{{
			Key: model.ServiceKey{Namespace: "default", Name: "ds"}, Type: model.ClusterIP,
			ClusterIPs: addrs("10.96.0.10", "fd00:96::10"),
			Ports: []model.ServicePort{
				{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{ep("10.244.1.5", 80, "node1"), ep("fd00:244:0:1::5", 80, "node1")}},
				{Name: "u", Protocol: model.UDP, Port: 53},
			},
		}},
	}
	p := NewPlanner(Config{Family: IPv6}).Plan(nil, st, model.Changes{}, true)
	text := string(p.NAT) + string(p.Filter)
	if strings.Contains(text, "10.96.0.10") || strings.Contains(text, "10.244.1.5") {
		t.Fatalf("IPv4 address in the IPv6 ruleset:\n%s", text)
	}
	for _, want := range []string{"-d fd00:96::10/128", "! -s fd00:244::/56", "--to-destination [fd00:244:0:1::5]:80", "icmp6-port-unreachable", "! -d ::1/128"} {
		if !strings.Contains(text, want) {
			t.Fatalf("IPv6 ruleset lacks %q:\n%s", want, text)
		}
	}
	rs, err := tracer.Parse(string(p.NAT), string(p.Filter), JumpRulesRestore())
	if err != nil {
		t.Fatal(err)
	}
	res, err := rs.Trace(tracer.Packet{Src: netip.MustParseAddr("fd00:244:0:2::9"), Dst: netip.MustParseAddr("fd00:96::10"), Proto: "tcp", DPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	wantTargets(t, res, map[string]bool{"[fd00:244:0:1::5]:80": false})
}
