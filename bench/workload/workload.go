// Package workload generates the benchmark's desired state: S services with E endpoints each,
// as a standalone ProxyConfig file and as Kubernetes Services + EndpointSlices. VIPs come from
// 10.96.0.0/16 and endpoint IPs from 10.244.0.0/16, outside the benchmark node's own pod range
// (10.244.1.0/24), so generated endpoints never collide with the real pods the data-path
// probes talk to. Two services can be pointed at real pods: the probe service (traffic) and
// the change service (one endpoint swapped to time an update).
package workload

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Fixed addresses and ports of the workload.
const (
	Namespace  = "bench"
	Port       = 80
	TargetPort = 8080
	PortName   = "tcp"
	// SinkPort is the probe service's second port (port = targetPort), for stream throughput.
	SinkPort     = 9090
	SinkPortName = "sink"
	ClusterCIDR  = "10.244.0.0/16"
	ServiceCIDR  = "10.96.0.0/16"
	// RemoteNode is the node name of generated (not real) endpoints.
	RemoteNode = "node2"
	// vipOffset skips 10.96.0.0/28 (10.96.0.1 is the apiserver's own "kubernetes" service).
	vipOffset = 16
	// epOffset skips 10.244.0.0/24 and the node's pod range 10.244.1.0/24.
	epOffset = 512
	epSpan   = 65536 - epOffset - 1
)

// MaxServices is the most services the VIP range holds.
const MaxServices = 65536 - vipOffset - 1

// Spec is one workload.
type Spec struct {
	Services  int
	Endpoints int
	// ProbeIPs, when set, are the endpoints of the probe service (the last one) instead of
	// generated addresses; NodeName is their node.
	ProbeIPs []netip.Addr
	// ChangeIPs, when set, are the endpoints of the change service (the one before the last).
	ChangeIPs []netip.Addr
	// NodeName is the node of the real endpoints (ProbeIPs, ChangeIPs).
	NodeName string
}

// Validate reports a spec the address ranges cannot hold.
func (s Spec) Validate() error {
	switch {
	case s.Services < 2:
		return fmt.Errorf("workload: %d services: need at least 2 (probe and change services)", s.Services)
	case s.Services > MaxServices:
		return fmt.Errorf("workload: %d services: at most %d VIPs fit in %s", s.Services, MaxServices, ServiceCIDR)
	case s.Endpoints < 1:
		return fmt.Errorf("workload: %d endpoints per service: need at least 1", s.Endpoints)
	}
	return nil
}

// ProbeIndex is the index of the probe service (the last, so it sorts last by name too).
func (s Spec) ProbeIndex() int { return s.Services - 1 }

// ChangeIndex is the index of the change service.
func (s Spec) ChangeIndex() int { return s.Services - 2 }

// Name is the name of service i (zero-padded so names sort by index).
func Name(i int) string { return fmt.Sprintf("svc-%05d", i) }

// VIP is the cluster IP of service i.
func VIP(i int) netip.Addr {
	n := vipOffset + i
	return netip.AddrFrom4([4]byte{10, 96, byte(n >> 8), byte(n)})
}

// GeneratedEndpoint is endpoint j of service i when it is not a real pod.
func GeneratedEndpoint(i, j, perService int) netip.Addr {
	n := epOffset + (i*perService+j)%epSpan
	return netip.AddrFrom4([4]byte{10, 244, byte(n >> 8), byte(n)})
}

// Endpoint is one endpoint of a service.
type Endpoint struct {
	IP   netip.Addr
	Node string
}

// ServiceEndpoints returns the endpoints of service i.
func (s Spec) ServiceEndpoints(i int) []Endpoint { return s.endpoints(i) }

func (s Spec) endpoints(i int) []Endpoint {
	real := func(ips []netip.Addr) []Endpoint {
		out := make([]Endpoint, len(ips))
		for k, ip := range ips {
			out[k] = Endpoint{IP: ip, Node: s.NodeName}
		}
		return out
	}
	switch {
	case i == s.ProbeIndex() && len(s.ProbeIPs) > 0:
		return real(s.ProbeIPs)
	case i == s.ChangeIndex() && len(s.ChangeIPs) > 0:
		return real(s.ChangeIPs)
	}
	out := make([]Endpoint, s.Endpoints)
	for j := range out {
		out[j] = Endpoint{IP: GeneratedEndpoint(i, j, s.Endpoints), Node: RemoteNode}
	}
	return out
}

// hasSink reports whether service i has the sink port: the probe service, when it has real
// endpoints.
func (s Spec) hasSink(i int) bool { return i == s.ProbeIndex() && len(s.ProbeIPs) > 0 }

// Settings are the non-service fields of a ProxyConfig the runner chooses.
type Settings struct {
	NodeName           string
	Mode               string // iptables | ebpf
	IPTablesBackend    string // nft | legacy | "" (auto)
	PodCIDR            string
	MetricsBindAddress string
	HealthzBindAddress string
	StateDir           string
	APISocket          string
	CgroupPath         string
	PinPath            string
	Bridge             string
}

// ProxyConfig renders the standalone config file (kind: ProxyConfig) with every service and
// its static endpoints. It writes YAML by hand (flow style, one endpoint per line): at 50,000
// services a generic marshaller is the slowest part of a run.
func (s Spec) ProxyConfig(set Settings) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(s.Services * (120 + 60*s.Endpoints))
	b.WriteString("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\n")
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s: %s\n", k, strconv.Quote(v))
		}
	}
	kv("nodeName", set.NodeName)
	kv("mode", set.Mode)
	b.WriteString("clusterCIDR: " + ClusterCIDR + "\n")
	kv("podCIDR", set.PodCIDR)
	b.WriteString("serviceCIDR: " + ServiceCIDR + "\n")
	kv("bridge", set.Bridge)
	kv("metricsBindAddress", set.MetricsBindAddress)
	kv("healthzBindAddress", set.HealthzBindAddress)
	kv("stateDir", set.StateDir)
	kv("apiSocket", set.APISocket)
	if set.IPTablesBackend != "" {
		fmt.Fprintf(&b, "iptables: {backend: %s}\n", set.IPTablesBackend)
	}
	if set.CgroupPath != "" || set.PinPath != "" {
		fmt.Fprintf(&b, "ebpf: {cgroupPath: %s, pinPath: %s}\n", strconv.Quote(set.CgroupPath), strconv.Quote(set.PinPath))
	}
	b.WriteString("services:\n")
	for i := 0; i < s.Services; i++ {
		fmt.Fprintf(&b, "  - name: %s\n    namespace: %s\n    clusterIP: %s\n    ports: [{name: %s, protocol: TCP, port: %d, targetPort: %d}",
			Name(i), Namespace, VIP(i), PortName, Port, TargetPort)
		if s.hasSink(i) {
			fmt.Fprintf(&b, ", {name: %s, protocol: TCP, port: %d, targetPort: %d}", SinkPortName, SinkPort, SinkPort)
		}
		b.WriteString("]\n    endpoints:\n")
		for _, ep := range s.endpoints(i) {
			fmt.Fprintf(&b, "      - {ip: %s, nodeName: %s, ready: true, serving: true}\n", ep.IP, ep.Node)
		}
	}
	return b.Bytes(), nil
}

// Labels of every generated object. The service-proxy-name label is absent on purpose, so
// every proxy (kube-proxy, svcproxy) handles the services.
const (
	ManagedByLabel = "endpointslice.kubernetes.io/managed-by"
	ManagedBy      = "svcbench"
)

// Service returns the Service object of service i (no selector: its EndpointSlice is made by
// the benchmark, as a controller would).
func (s Spec) Service(i int) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: Name(i), Namespace: Namespace, Labels: map[string]string{"app": "svcbench"}},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  VIP(i).String(),
			ClusterIPs: []string{VIP(i).String()},
			Ports: []corev1.ServicePort{{
				Name: PortName, Protocol: corev1.ProtocolTCP, Port: Port, TargetPort: intstr.FromInt32(TargetPort),
			}},
		},
	}
	if s.hasSink(i) {
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{
			Name: SinkPortName, Protocol: corev1.ProtocolTCP, Port: SinkPort, TargetPort: intstr.FromInt32(SinkPort),
		})
	}
	return svc
}

// SliceName is the name of service i's EndpointSlice.
func SliceName(i int) string { return Name(i) + "-1" }

// EndpointSlice returns the EndpointSlice of service i.
func (s Spec) EndpointSlice(i int) *discoveryv1.EndpointSlice {
	eps := s.endpoints(i)
	t := true
	out := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      SliceName(i),
			Namespace: Namespace,
			Labels:    map[string]string{discoveryv1.LabelServiceName: Name(i), ManagedByLabel: ManagedBy},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{
			Name: ptr(PortName), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(TargetPort)),
		}},
	}
	if s.hasSink(i) {
		out.Ports = append(out.Ports, discoveryv1.EndpointPort{
			Name: ptr(SinkPortName), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(SinkPort)),
		})
	}
	for _, ep := range eps {
		node := ep.Node
		out.Endpoints = append(out.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ep.IP.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &t, Serving: &t, Terminating: ptr(false)},
			NodeName:   &node,
		})
	}
	return out
}

// WithChange returns a copy of s whose change service has the given endpoints.
func (s Spec) WithChange(ips ...netip.Addr) Spec {
	s.ChangeIPs = append([]netip.Addr(nil), ips...)
	return s
}

func ptr[T any](v T) *T { return &v }
