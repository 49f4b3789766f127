package workload

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/config"
)

func TestAddressesStayInRangesAndAreUnique(t *testing.T) {
	spec := Spec{Services: 50000, Endpoints: 10}
	cluster := netip.MustParsePrefix(ClusterCIDR)
	svc := netip.MustParsePrefix(ServiceCIDR)
	node := netip.MustParsePrefix("10.244.1.0/24")
	vips := map[netip.Addr]bool{}
	for i := 0; i < spec.Services; i++ {
		v := VIP(i)
		if !svc.Contains(v) || vips[v] || v == netip.MustParseAddr("10.96.0.1") {
			t.Fatalf("VIP %d = %s: outside %s, duplicate or the apiserver's", i, v, svc)
		}
		vips[v] = true
		if i%997 != 0 {
			continue
		}
		seen := map[netip.Addr]bool{}
		for _, ep := range spec.ServiceEndpoints(i) {
			if !cluster.Contains(ep.IP) || node.Contains(ep.IP) || seen[ep.IP] {
				t.Fatalf("service %d endpoint %s: outside %s, inside the node range or duplicate", i, ep.IP, cluster)
			}
			seen[ep.IP] = true
		}
	}
	if err := (Spec{Services: MaxServices + 1, Endpoints: 1}).Validate(); err == nil {
		t.Fatal("a spec with more services than VIPs validated")
	}
}

func TestRealEndpointsReplaceGeneratedOnes(t *testing.T) {
	a, b := netip.MustParseAddr("10.244.1.10"), netip.MustParseAddr("10.244.1.11")
	spec := Spec{Services: 5, Endpoints: 10, ProbeIPs: []netip.Addr{a, b}, ChangeIPs: []netip.Addr{a}, NodeName: "node1"}
	if got := spec.ServiceEndpoints(4); len(got) != 2 || got[0].IP != a || got[1].Node != "node1" {
		t.Fatalf("probe service endpoints = %v", got)
	}
	if got := spec.WithChange(b).ServiceEndpoints(3); len(got) != 1 || got[0].IP != b {
		t.Fatalf("change service endpoints after WithChange = %v", got)
	}
	if got := spec.ServiceEndpoints(3); got[0].IP != a {
		t.Fatalf("WithChange modified the original spec: %v", got)
	}
	if got := spec.ServiceEndpoints(0); len(got) != 10 || got[0].Node != RemoteNode {
		t.Fatalf("generated service endpoints = %v", got)
	}
	sl := spec.EndpointSlice(4)
	if sl.Labels["kubernetes.io/service-name"] != Name(4) || len(sl.Endpoints) != 2 || *sl.Endpoints[0].NodeName != "node1" {
		t.Fatalf("slice = %+v", sl)
	}
	svc := spec.Service(4)
	if _, ok := svc.Labels["service.kubernetes.io/service-proxy-name"]; ok || svc.Spec.ClusterIP != VIP(4).String() {
		t.Fatalf("service = %+v", svc)
	}
}

// The rendered file is what svcproxy itself accepts: parsed and validated by the config package.
func TestProxyConfigIsValid(t *testing.T) {
	a := netip.MustParseAddr("10.244.1.10")
	spec := Spec{Services: 200, Endpoints: 10, ProbeIPs: []netip.Addr{a}, ChangeIPs: []netip.Addr{a}, NodeName: "node1"}
	data, err := spec.ProxyConfig(Settings{NodeName: "node1", Mode: "iptables", IPTablesBackend: "legacy", PodCIDR: "10.244.1.0/24",
		MetricsBindAddress: "127.0.0.1:10249", HealthzBindAddress: "127.0.0.1:10256", StateDir: "/tmp/x/state", APISocket: "/tmp/x/s.sock",
		CgroupPath: "/sys/fs/cgroup/x", PinPath: "/sys/fs/bpf/x"})
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "ready: true"); n != 198*10+2 {
		t.Fatalf("%d endpoints rendered, want %d", n, 198*10+2)
	}
	checkConfig(t, data)
}

func checkConfig(t *testing.T, data []byte) {
	t.Helper()
	cfg, err := config.Parse("bench.yaml", data)
	if err != nil {
		t.Fatalf("svcproxy's config parser refused the generated file: %v", err)
	}
	st, err := cfg.BuildState("node1", nil, config.NewMemAllocator())
	if err != nil {
		t.Fatalf("building the state of the generated file: %v", err)
	}
	if len(st.Services) != 200 || st.EndpointCount() != 198*10+3 { // the probe service counts its endpoint on both ports
		t.Fatalf("state has %d services and %d endpoints, want 200 and %d", len(st.Services), st.EndpointCount(), 198*10+3)
	}
	if s := st.Services[199]; s.Key.Name != Name(199) || len(s.Ports) != 2 || s.Ports[0].Endpoints[0].IP.String() != "10.244.1.10" {
		t.Fatalf("last service = %+v", s)
	}
}
