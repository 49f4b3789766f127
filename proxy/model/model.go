// Package model holds the desired state of the node's service proxy: services, their ports and
// endpoints, and the node settings a backend needs to program them. Every source (the config
// file, the Kubernetes API, pods registered through CNI) produces a State; every backend
// (iptables, eBPF) consumes one. Nothing here touches the kernel.
package model

import (
	"fmt"
	"net/netip"
	"sort"
	"time"
)

// Protocol is an L4 protocol, spelled as in the Kubernetes Service API.
type Protocol string

// Protocols supported by every backend.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// ServiceType is the Kubernetes Service type.
type ServiceType string

// Service types.
const (
	ClusterIP    ServiceType = "ClusterIP"
	NodePort     ServiceType = "NodePort"
	LoadBalancer ServiceType = "LoadBalancer"
)

// ServiceKey names a service.
type ServiceKey struct {
	Namespace string
	Name      string
}

func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// PortKey names one port of one service, like kube-proxy's ServicePortName.
type PortKey struct {
	Service  ServiceKey
	Port     string // the port's name; "" for a single unnamed port
	Protocol Protocol
}

func (k PortKey) String() string {
	if k.Port == "" {
		return fmt.Sprintf("%s:%s", k.Service, k.Protocol)
	}
	return fmt.Sprintf("%s:%s/%s", k.Service, k.Port, k.Protocol)
}

// Endpoint is one backend of one service port, with the target port already resolved.
type Endpoint struct {
	IP          netip.Addr
	Port        uint16
	NodeName    string
	Zone        string
	Ready       bool
	Serving     bool
	Terminating bool
	// ZoneHints and NodeHints come from EndpointSlice hints (topology aware routing).
	ZoneHints []string
	NodeHints []string
}

// AddrPort returns the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort { return netip.AddrPortFrom(e.IP, e.Port) }

func (e Endpoint) String() string { return e.AddrPort().String() }

// ServicePort is one port of a service together with its endpoints.
type ServicePort struct {
	Name     string
	Protocol Protocol
	Port     uint16
	NodePort uint16 // 0 when the service has none
	// Endpoints of this port, sorted by address then port. Categorise them with
	// CategorizeEndpoints; do not filter them by hand in a backend.
	Endpoints []Endpoint
}

// Service is a service as the proxy needs it.
type Service struct {
	Key                      ServiceKey
	Type                     ServiceType
	ClusterIPs               []netip.Addr
	ExternalIPs              []netip.Addr
	LoadBalancerIPs          []netip.Addr
	LoadBalancerSourceRanges []netip.Prefix
	// AffinityTimeout > 0 means sessionAffinity ClientIP with that timeout.
	AffinityTimeout            time.Duration
	ExternalTrafficPolicyLocal bool
	InternalTrafficPolicyLocal bool
	HealthCheckNodePort        uint16
	// TrafficDistribution is "", "PreferClose" or "PreferSameNode" (or "PreferSameZone").
	TrafficDistribution string
	Ports               []ServicePort
}

// PortKey returns the key of the given port of s.
func (s *Service) PortKey(p *ServicePort) PortKey {
	return PortKey{Service: s.Key, Port: p.Name, Protocol: p.Protocol}
}

// ExternallyReachable reports whether the service accepts traffic from outside the cluster
// (NodePort, externalIPs or load-balancer IPs).
func (s *Service) ExternallyReachable() bool {
	return s.Type == NodePort || s.Type == LoadBalancer || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
}

// Node is a node of the cluster as the proxy sees it.
type Node struct {
	Name     string
	Address  netip.Addr // the underlay (InternalIP) address
	PodCIDRs []netip.Prefix
	Zone     string
}

// State is the whole desired state of the proxy on one node.
type State struct {
	// NodeName is this node's name; Zone its topology zone ("" when unknown).
	NodeName string
	Zone     string
	// ClusterCIDRs hold every pod IP of the cluster: traffic from outside them to a service is
	// masqueraded.
	ClusterCIDRs []netip.Prefix
	// PodCIDRs is this node's pod range(s).
	PodCIDRs []netip.Prefix
	// ServiceCIDRs hold every VIP.
	ServiceCIDRs []netip.Prefix
	// NodePortAddresses restricts which local addresses accept NodePorts; empty means all.
	NodePortAddresses []netip.Prefix
	MasqueradeAll     bool
	// Nodes are the other nodes of the cluster, for routing their pod ranges.
	Nodes []Node
	// Services sorted by key.
	Services []*Service
	// TriggerTimes records, per service, when the change that led to this state was made
	// (from the EndpointSlice trigger-time annotation or the file write), for the network
	// programming latency metric. May be nil.
	TriggerTimes map[ServiceKey]time.Time
}

// Sort puts services, ports and endpoints in their canonical order, so that two equal states
// render identically.
func (st *State) Sort() {
	sort.Slice(st.Services, func(i, j int) bool { return lessKey(st.Services[i].Key, st.Services[j].Key) })
	for _, s := range st.Services {
		for i := range s.Ports {
			eps := s.Ports[i].Endpoints
			sort.Slice(eps, func(a, b int) bool {
				if c := eps[a].IP.Compare(eps[b].IP); c != 0 {
					return c < 0
				}
				return eps[a].Port < eps[b].Port
			})
		}
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Name < st.Nodes[j].Name })
}

// Service returns the service with the given key, or nil.
func (st *State) Service(k ServiceKey) *Service {
	i := sort.Search(len(st.Services), func(i int) bool { return !lessKey(st.Services[i].Key, k) })
	if i < len(st.Services) && st.Services[i].Key == k {
		return st.Services[i]
	}
	return nil
}

// InClusterCIDR reports whether ip is a pod address of the cluster.
func (st *State) InClusterCIDR(ip netip.Addr) bool {
	for _, p := range st.ClusterCIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// EndpointCount returns the number of endpoints over every port of every service.
func (st *State) EndpointCount() int {
	n := 0
	for _, s := range st.Services {
		for _, p := range s.Ports {
			n += len(p.Endpoints)
		}
	}
	return n
}

func lessKey(a, b ServiceKey) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// Pod is a pod known to this node (registered through svcproxy-cni, or read from the API):
// services whose selector matches its labels get it as an endpoint.
type Pod struct {
	Namespace string
	Name      string
	IPs       []netip.Addr
	NodeName  string
	Labels    map[string]string
	// Ready is false while the pod is being torn down.
	Ready bool
}
