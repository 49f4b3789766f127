package iptables

import (
	"net/netip"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Addresses of the fixture. This node is node1 (underlay 172.31.0.2, pods 10.244.1.0/24);
// node2 has pods 10.244.2.0/24.
var (
	nodeIP    = netip.MustParseAddr("172.31.0.2")
	outsideIP = netip.MustParseAddr("172.31.0.200") // a client outside the cluster
	podA      = netip.MustParseAddr("10.244.1.10")  // a local pod (client)
)

func ep(ip string, port uint16, node string) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, NodeName: node, Ready: true, Serving: true}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

// fixtureState is a representative state: every semantic the backend implements appears once.
func fixtureState() *model.State {
	terminating := ep("10.244.2.21", 8080, "node2")
	terminating.Ready, terminating.Terminating = false, true
	notServing := ep("10.244.2.22", 8080, "node2")
	notServing.Ready, notServing.Serving, notServing.Terminating = false, false, true
	zoneA := ep("10.244.1.30", 80, "node1")
	zoneA.ZoneHints = []string{"z1"}
	zoneB := ep("10.244.2.30", 80, "node2")
	zoneB.ZoneHints = []string{"z2"}

	st := &model.State{
		NodeName:     "node1",
		Zone:         "z1",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
		Services: []*model.Service{
			{ // three endpoints, plain ClusterIP, TCP
				Key: model.ServiceKey{Namespace: "default", Name: "web"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.10"),
				Ports: []model.ServicePort{{Name: "http", Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
					ep("10.244.1.10", 8080, "node1"), ep("10.244.1.11", 8080, "node1"), ep("10.244.2.10", 8080, "node2")}}},
			},
			{ // UDP + SCTP, no endpoints on UDP: REJECT
				Key: model.ServiceKey{Namespace: "default", Name: "dns"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.53"),
				Ports: []model.ServicePort{
					{Name: "dns", Protocol: model.UDP, Port: 53},
					{Name: "sctp", Protocol: model.SCTP, Port: 9999, Endpoints: []model.Endpoint{ep("10.244.2.53", 9999, "node2")}},
				},
			},
			{ // NodePort + externalIP, ETP Local, one local and one remote endpoint
				Key: model.ServiceKey{Namespace: "default", Name: "np-local"}, Type: model.NodePort,
				ClusterIPs: addrs("10.96.0.20"), ExternalIPs: addrs("172.31.0.100"),
				ExternalTrafficPolicyLocal: true,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: []model.Endpoint{
					ep("10.244.1.20", 8080, "node1"), ep("10.244.2.20", 8080, "node2")}}},
			},
			{ // NodePort, ETP Local, no local endpoints: external traffic dropped
				Key: model.ServiceKey{Namespace: "default", Name: "np-remote"}, Type: model.NodePort,
				ClusterIPs: addrs("10.96.0.21"), ExternalTrafficPolicyLocal: true,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30081, Endpoints: []model.Endpoint{
					ep("10.244.2.25", 8080, "node2")}}},
			},
			{ // NodePort, Cluster policy, no endpoints at all: REJECT
				Key: model.ServiceKey{Namespace: "default", Name: "np-empty"}, Type: model.NodePort,
				ClusterIPs: addrs("10.96.0.22"),
				Ports:      []model.ServicePort{{Protocol: model.UDP, Port: 5000, NodePort: 30500}},
			},
			{ // LoadBalancer with source ranges, ETP Local, health check node port
				Key: model.ServiceKey{Namespace: "default", Name: "lb"}, Type: model.LoadBalancer,
				ClusterIPs: addrs("10.96.0.30"), LoadBalancerIPs: addrs("172.31.0.150"),
				LoadBalancerSourceRanges:   []netip.Prefix{netip.MustParsePrefix("172.31.0.0/25")},
				ExternalTrafficPolicyLocal: true, HealthCheckNodePort: 32000,
				Ports: []model.ServicePort{{Name: "https", Protocol: model.TCP, Port: 443, NodePort: 30443, Endpoints: []model.Endpoint{
					ep("10.244.1.40", 8443, "node1")}}},
			},
			{ // session affinity ClientIP with a 300 s timeout
				Key: model.ServiceKey{Namespace: "default", Name: "sticky"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.40"), AffinityTimeout: 300 * time.Second,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
					ep("10.244.1.50", 80, "node1"), ep("10.244.2.50", 80, "node2")}}},
			},
			{ // only terminating endpoints: the serving one is used, the non-serving one not
				Key: model.ServiceKey{Namespace: "default", Name: "draining"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.50"),
				Ports:      []model.ServicePort{{Protocol: model.TCP, Port: 8080, Endpoints: []model.Endpoint{terminating, notServing}}},
			},
			{ // internalTrafficPolicy Local with one local endpoint
				Key: model.ServiceKey{Namespace: "default", Name: "itp-local"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.60"), InternalTrafficPolicyLocal: true,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
					ep("10.244.1.60", 80, "node1"), ep("10.244.2.60", 80, "node2")}}},
			},
			{ // internalTrafficPolicy Local without a local endpoint: DROP
				Key: model.ServiceKey{Namespace: "default", Name: "itp-remote"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.61"), InternalTrafficPolicyLocal: true,
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
					ep("10.244.2.61", 80, "node2")}}},
			},
			{ // topology: PreferClose with zone hints narrows to the same zone
				Key: model.ServiceKey{Namespace: "default", Name: "topo"}, Type: model.ClusterIP,
				ClusterIPs: addrs("10.96.0.70"), TrafficDistribution: "PreferClose",
				Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{zoneA, zoneB}}},
			},
		},
	}
	st.Sort()
	return st
}
