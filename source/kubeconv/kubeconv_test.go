package kubeconv

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func ptr[T any](v T) *T { return &v }

// netOpts lets cmp compare net/netip values (they have unexported fields).
var netOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func svc(name string, mut func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)},
			},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

func slice(name, service string, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: at,
		Ports:       ports,
		Endpoints:   eps,
	}
}

func port(name string, proto corev1.Protocol, p int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr(name), Protocol: ptr(proto), Port: ptr(p)}
}

func ep(ip, node string, ready, serving, terminating *bool) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating},
	}
	if node != "" {
		e.NodeName = ptr(node)
	}
	return e
}

func TestServiceMergesSlicesByPortNameAndProtocol(t *testing.T) {
	s := svc("web", nil)
	slices := []*discoveryv1.EndpointSlice{
		slice("web-b", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080), port("dns", corev1.ProtocolUDP, 5353)},
			ep("10.244.1.3", "node1", nil, nil, nil),
			// The same endpoint in two slices: the ready copy wins.
			ep("10.244.1.2", "node1", ptr(true), nil, nil)),
		slice("web-a", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)},
			ep("10.244.1.2", "node1", ptr(false), ptr(false), nil),
			ep("10.244.2.7", "node2", ptr(false), ptr(true), ptr(true))),
		// A named port with a different target number in another slice (pods differ in their
		// container port): resolved per slice.
		slice("web-c", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 9090)},
			ep("10.244.3.1", "node3", ptr(true), ptr(true), ptr(false))),
		// Same port name, other protocol: not matched to "http/TCP".
		slice("web-d", "web", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolUDP, 7000)},
			ep("10.244.4.1", "", nil, nil, nil)),
		// Another service's slice, a slice owned by another proxy, an FQDN slice and an
		// IPv6 slice for a single-stack IPv4 service: all ignored.
		slice("other", "other", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 1)}, ep("10.244.9.9", "", nil, nil, nil)),
		func() *discoveryv1.EndpointSlice {
			sl := slice("web-proxied", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 1)}, ep("10.244.9.8", "", nil, nil, nil))
			sl.Labels[LabelServiceProxyName] = "other-proxy"
			return sl
		}(),
		func() *discoveryv1.EndpointSlice {
			sl := slice("web-headless", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 1)}, ep("10.244.9.7", "", nil, nil, nil))
			sl.Labels[LabelHeadless] = ""
			return sl
		}(),
		slice("web-fqdn", "web", discoveryv1.AddressTypeFQDN,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 1)}, ep("example.com", "", nil, nil, nil)),
		slice("web-v6", "web", discoveryv1.AddressTypeIPv6,
			[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 1)}, ep("fd00::1", "", nil, nil, nil)),
	}
	got, ok := Service(s, slices)
	if !ok {
		t.Fatal("service not proxyable")
	}
	want := &model.Service{
		Key:        model.ServiceKey{Namespace: "ns", Name: "web"},
		Type:       model.ClusterIP,
		ClusterIPs: []netip.Addr{addr("10.96.0.10")},
		Ports: []model.ServicePort{
			{Name: "http", Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				{IP: addr("10.244.1.2"), Port: 8080, NodeName: "node1", Ready: true, Serving: true},
				{IP: addr("10.244.1.3"), Port: 8080, NodeName: "node1", Ready: true, Serving: true},
				{IP: addr("10.244.2.7"), Port: 8080, NodeName: "node2", Ready: false, Serving: true, Terminating: true},
				{IP: addr("10.244.3.1"), Port: 9090, NodeName: "node3", Ready: true, Serving: true},
			}},
			{Name: "dns", Protocol: model.UDP, Port: 53, Endpoints: []model.Endpoint{
				{IP: addr("10.244.1.2"), Port: 5353, NodeName: "node1", Ready: true, Serving: true},
				{IP: addr("10.244.1.3"), Port: 5353, NodeName: "node1", Ready: true, Serving: true},
			}},
		},
	}
	if d := cmp.Diff(want, got, netOpts); d != "" {
		t.Errorf("Service() mismatch (-want +got):\n%s", d)
	}
}

func TestServiceConditions(t *testing.T) {
	// nil ready = true; nil serving = ready; nil terminating = false.
	cases := []struct {
		name                 string
		ready, serving, term *bool
		want                 [3]bool
	}{
		{"all nil", nil, nil, nil, [3]bool{true, true, false}},
		{"not ready, serving nil", ptr(false), nil, nil, [3]bool{false, false, false}},
		{"terminating serving", ptr(false), ptr(true), ptr(true), [3]bool{false, true, true}},
		{"terminating not serving", ptr(false), ptr(false), ptr(true), [3]bool{false, false, true}},
		{"ready explicit", ptr(true), ptr(true), ptr(false), [3]bool{true, true, false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := svc("web", nil)
			sl := slice("web-a", "web", discoveryv1.AddressTypeIPv4,
				[]discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)},
				ep("10.244.1.2", "", c.ready, c.serving, c.term))
			got, ok := Service(s, []*discoveryv1.EndpointSlice{sl})
			if !ok || len(got.Ports[0].Endpoints) != 1 {
				t.Fatalf("got %+v, %v", got, ok)
			}
			e := got.Ports[0].Endpoints[0]
			if g := [3]bool{e.Ready, e.Serving, e.Terminating}; g != c.want {
				t.Errorf("ready/serving/terminating = %v, want %v", g, c.want)
			}
		})
	}
}

func TestServiceHintsZoneAndTopology(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.TrafficDistribution = ptr(corev1.ServiceTrafficDistributionPreferSameNode)
	})
	e := ep("10.244.1.2", "node1", nil, nil, nil)
	e.Zone = ptr("z1")
	e.Hints = &discoveryv1.EndpointHints{
		ForZones: []discoveryv1.ForZone{{Name: "z1"}, {Name: "z2"}},
		ForNodes: []discoveryv1.ForNode{{Name: "node1"}},
	}
	sl := slice("web-a", "web", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}, e)
	got, _ := Service(s, []*discoveryv1.EndpointSlice{sl})
	if got.TrafficDistribution != "PreferSameNode" {
		t.Errorf("TrafficDistribution = %q", got.TrafficDistribution)
	}
	g := got.Ports[0].Endpoints[0]
	if g.Zone != "z1" || !cmp.Equal(g.ZoneHints, []string{"z1", "z2"}) || !cmp.Equal(g.NodeHints, []string{"node1"}) {
		t.Errorf("endpoint = %+v", g)
	}

	// The legacy topology annotation means PreferClose.
	s2 := svc("web", func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationTopologyMode: "Auto"}
	})
	got2, _ := Service(s2, nil)
	if got2.TrafficDistribution != "PreferClose" {
		t.Errorf("annotation: TrafficDistribution = %q", got2.TrafficDistribution)
	}
	s3 := svc("web", func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationTopologyMode: "Disabled"}
	})
	if got3, _ := Service(s3, nil); got3.TrafficDistribution != "" {
		t.Errorf("disabled annotation: TrafficDistribution = %q", got3.TrafficDistribution)
	}
}

func TestServiceLoadBalancerFields(t *testing.T) {
	s := svc("lb", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ClusterIPs = []string{"10.96.0.20", "fd00:96::20"}
		s.Spec.ClusterIP = "10.96.0.20"
		s.Spec.Ports = []corev1.ServicePort{{Name: "", Port: 443, NodePort: 31443, TargetPort: intstr.FromInt32(8443)}}
		s.Spec.ExternalIPs = []string{"192.0.2.1", "bogus", "192.0.2.1", "2001:db8::1"}
		s.Spec.LoadBalancerIP = "198.51.100.1"
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
			{IP: "198.51.100.2"},
			{IP: "198.51.100.3", IPMode: ptr(corev1.LoadBalancerIPModeVIP)},
			{IP: "198.51.100.4", IPMode: ptr(corev1.LoadBalancerIPModeProxy)},
			{Hostname: "lb.example.com"},
			{IP: "198.51.100.1"},
		}
		s.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/24", "203.0.113.7/24", "nope"}
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
		s.Spec.HealthCheckNodePort = 32000
	})
	got, ok := Service(s, nil)
	if !ok {
		t.Fatal("not proxyable")
	}
	want := &model.Service{
		Key:                        model.ServiceKey{Namespace: "ns", Name: "lb"},
		Type:                       model.LoadBalancer,
		ClusterIPs:                 []netip.Addr{addr("10.96.0.20"), addr("fd00:96::20")},
		ExternalIPs:                []netip.Addr{addr("192.0.2.1"), addr("2001:db8::1")},
		LoadBalancerIPs:            []netip.Addr{addr("198.51.100.1"), addr("198.51.100.2"), addr("198.51.100.3")},
		LoadBalancerSourceRanges:   []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		AffinityTimeout:            DefaultAffinityTimeout,
		ExternalTrafficPolicyLocal: true,
		InternalTrafficPolicyLocal: true,
		HealthCheckNodePort:        32000,
		Ports:                      []model.ServicePort{{Protocol: model.TCP, Port: 443, NodePort: 31443}},
	}
	if d := cmp.Diff(want, got, netOpts); d != "" {
		t.Errorf("mismatch (-want +got):\n%s", d)
	}
}

func TestServiceAffinityTimeoutAndSingleStackFamilies(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(60))}}
		s.Spec.ExternalIPs = []string{"2001:db8::1"} // other family: dropped
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.HealthCheckNodePort = 32000 // not LoadBalancer+Local: ignored
	})
	got, _ := Service(s, nil)
	if got.AffinityTimeout != time.Minute {
		t.Errorf("AffinityTimeout = %v", got.AffinityTimeout)
	}
	if len(got.ExternalIPs) != 0 || got.HealthCheckNodePort != 0 {
		t.Errorf("ExternalIPs = %v, HealthCheckNodePort = %d", got.ExternalIPs, got.HealthCheckNodePort)
	}
	if got.Ports[0].NodePort != 30080 || got.Ports[1].NodePort != 0 {
		t.Errorf("node ports = %d, %d", got.Ports[0].NodePort, got.Ports[1].NodePort)
	}
	// ClusterIP services carry no node port even if the object has one.
	c := svc("c", func(s *corev1.Service) { s.Spec.Ports[0].NodePort = 30080 })
	if got, _ := Service(c, nil); got.Ports[0].NodePort != 0 {
		t.Errorf("ClusterIP service got node port %d", got.Ports[0].NodePort)
	}
}

func TestServiceDualStackEndpoints(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.ClusterIPs = []string{"fd00:96::10", "10.96.0.10"}
		s.Spec.ClusterIP = "fd00:96::10"
	})
	slices := []*discoveryv1.EndpointSlice{
		slice("a", "web", discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)}, ep("10.244.1.2", "", nil, nil, nil)),
		slice("b", "web", discoveryv1.AddressTypeIPv6, []discoveryv1.EndpointPort{port("http", corev1.ProtocolTCP, 8080)},
			ep("fd00:244::2", "", nil, nil, nil),
			ep("10.244.1.9", "", nil, nil, nil)), // wrong family for the slice: dropped
	}
	got, _ := Service(s, slices)
	var ips []string
	for _, e := range got.Ports[0].Endpoints {
		ips = append(ips, e.IP.String())
	}
	if !cmp.Equal(ips, []string{"10.244.1.2", "fd00:244::2"}) {
		t.Errorf("endpoints = %v", ips)
	}
	if !cmp.Equal(got.ClusterIPs, []netip.Addr{addr("fd00:96::10"), addr("10.96.0.10")}, netOpts) {
		t.Errorf("ClusterIPs = %v", got.ClusterIPs)
	}
}

func TestServiceNotProxyable(t *testing.T) {
	cases := map[string]*corev1.Service{
		"headless": svc("h", func(s *corev1.Service) { s.Spec.ClusterIP = "None"; s.Spec.ClusterIPs = []string{"None"} }),
		"externalName": svc("e", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
		}),
		"no clusterIP":   svc("n", func(s *corev1.Service) { s.Spec.ClusterIP = ""; s.Spec.ClusterIPs = nil }),
		"bad clusterIP":  svc("b", func(s *corev1.Service) { s.Spec.ClusterIP = "x"; s.Spec.ClusterIPs = []string{"x"} }),
		"other proxy":    svc("o", func(s *corev1.Service) { s.Labels = map[string]string{LabelServiceProxyName: "foo"} }),
		"headless label": svc("l", func(s *corev1.Service) { s.Labels = map[string]string{LabelHeadless: ""} }),
	}
	for name, s := range cases {
		if got, ok := Service(s, nil); ok || got != nil {
			t.Errorf("%s: got %+v, %v; want not proxyable", name, got, ok)
		}
	}
	if _, ok := Service(nil, nil); ok {
		t.Error("nil service proxyable")
	}
}

func TestServiceSkipsBadPortsAndEndpoints(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "bad", Port: 70000})
	})
	sl := slice("a", "web", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{
			port("http", corev1.ProtocolTCP, 8080),
			{Name: ptr("dns"), Protocol: ptr(corev1.ProtocolUDP)}, // no port number: skipped
		},
		ep("not-an-ip", "", nil, nil, nil),
		discoveryv1.Endpoint{}, // no address
		// Only the first address counts, as in kube-proxy.
		discoveryv1.Endpoint{Addresses: []string{"10.244.1.4", "10.244.1.5"}},
	)
	got, _ := Service(s, []*discoveryv1.EndpointSlice{sl})
	if len(got.Ports) != 2 {
		t.Fatalf("ports = %+v", got.Ports)
	}
	if eps := got.Ports[0].Endpoints; len(eps) != 1 || eps[0].IP != addr("10.244.1.4") {
		t.Errorf("http endpoints = %v", eps)
	}
	if eps := got.Ports[1].Endpoints; len(eps) != 0 {
		t.Errorf("dns endpoints = %v", eps)
	}
}

func TestServiceUnnamedPortDefaultsProtocol(t *testing.T) {
	s := svc("web", func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}
	})
	sl := slice("a", "web", discoveryv1.AddressTypeIPv4,
		[]discoveryv1.EndpointPort{{Port: ptr(int32(8080))}}, ep("10.244.1.2", "", nil, nil, nil))
	got, _ := Service(s, []*discoveryv1.EndpointSlice{sl})
	p := got.Ports[0]
	if p.Protocol != model.TCP || p.Name != "" || len(p.Endpoints) != 1 || p.Endpoints[0].Port != 8080 {
		t.Errorf("port = %+v", p)
	}
}

func TestTriggerTime(t *testing.T) {
	at := func(v string) *discoveryv1.EndpointSlice {
		sl := slice("a", "web", discoveryv1.AddressTypeIPv4, nil)
		if v != "" {
			sl.Annotations = map[string]string{AnnotationTriggerTime: v}
		}
		return sl
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	got, ok := TriggerTime(at(t1.Format(time.RFC3339Nano)))
	if !ok || !got.Equal(t1) {
		t.Errorf("TriggerTime = %v, %v", got, ok)
	}
	if _, ok := TriggerTime(at("yesterday")); ok {
		t.Error("bad annotation parsed")
	}
	if _, ok := TriggerTime(at("")); ok {
		t.Error("missing annotation parsed")
	}
	t2 := t1.Add(time.Second)
	latest, ok := LatestTriggerTime([]*discoveryv1.EndpointSlice{at(t2.Format(time.RFC3339)), nil, at(t1.Format(time.RFC3339Nano)), at("")})
	if !ok || !latest.Equal(t2.Truncate(time.Second)) {
		t.Errorf("LatestTriggerTime = %v, %v", latest, ok)
	}
	if _, ok := LatestTriggerTime(nil); ok {
		t.Error("LatestTriggerTime(nil) found a time")
	}
}

func TestServiceKeyOfAndSourceRangesAnnotation(t *testing.T) {
	sl := slice("a", "web", discoveryv1.AddressTypeIPv4, nil)
	if k, ok := ServiceKeyOf(sl); !ok || k != (model.ServiceKey{Namespace: "ns", Name: "web"}) {
		t.Errorf("ServiceKeyOf = %v, %v", k, ok)
	}
	sl.Labels = nil
	if _, ok := ServiceKeyOf(sl); ok {
		t.Error("unlabelled slice has a service")
	}
	s := svc("lb", func(s *corev1.Service) {
		s.Annotations = map[string]string{AnnotationLBSourceRanges: "10.0.0.0/8, 192.168.0.0/16"}
	})
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.0.0/16")}
	if got := SourceRanges(s); !cmp.Equal(got, want, netOpts) {
		t.Errorf("SourceRanges = %v", got)
	}
}
