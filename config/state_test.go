package config

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

var update = flag.Bool("update", false, "rewrite golden files")

// render prints a state in a stable, reviewable form.
func render(st *model.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "node %s zone=%q\n", st.NodeName, st.Zone)
	fmt.Fprintf(&b, "clusterCIDRs %v podCIDRs %v serviceCIDRs %v nodePortAddresses %v masqueradeAll %v\n",
		st.ClusterCIDRs, st.PodCIDRs, st.ServiceCIDRs, st.NodePortAddresses, st.MasqueradeAll)
	for _, n := range st.Nodes {
		fmt.Fprintf(&b, "peer %s %s %v zone=%q\n", n.Name, n.Address, n.PodCIDRs, n.Zone)
	}
	for _, s := range st.Services {
		fmt.Fprintf(&b, "service %s %s vips=%v", s.Key, s.Type, s.ClusterIPs)
		if len(s.ExternalIPs) > 0 {
			fmt.Fprintf(&b, " externalIPs=%v", s.ExternalIPs)
		}
		if len(s.LoadBalancerIPs) > 0 {
			fmt.Fprintf(&b, " lbIPs=%v", s.LoadBalancerIPs)
		}
		if len(s.LoadBalancerSourceRanges) > 0 {
			fmt.Fprintf(&b, " sourceRanges=%v", s.LoadBalancerSourceRanges)
		}
		if s.AffinityTimeout > 0 {
			fmt.Fprintf(&b, " affinity=%v", s.AffinityTimeout)
		}
		if s.ExternalTrafficPolicyLocal {
			b.WriteString(" etp=Local")
		}
		if s.InternalTrafficPolicyLocal {
			b.WriteString(" itp=Local")
		}
		if s.HealthCheckNodePort != 0 {
			fmt.Fprintf(&b, " hcNodePort=%d", s.HealthCheckNodePort)
		}
		if s.TrafficDistribution != "" {
			fmt.Fprintf(&b, " td=%s", s.TrafficDistribution)
		}
		if t, ok := st.TriggerTimes[s.Key]; ok {
			fmt.Fprintf(&b, " trigger=%s", t.UTC().Format(time.RFC3339))
		}
		b.WriteString("\n")
		for _, p := range s.Ports {
			fmt.Fprintf(&b, "  port %q %s %d nodePort=%d\n", p.Name, p.Protocol, p.Port, p.NodePort)
			for _, e := range p.Endpoints {
				fmt.Fprintf(&b, "    %s node=%q zone=%q ready=%v serving=%v terminating=%v\n",
					e.AddrPort(), e.NodeName, e.Zone, e.Ready, e.Serving, e.Terminating)
			}
		}
	}
	return b.String()
}

func pods() []model.Pod {
	a := netip.MustParseAddr
	return []model.Pod{
		{Namespace: "default", Name: "web-1", IPs: []netip.Addr{a("10.244.1.11")}, NodeName: "node1", Labels: map[string]string{"app": "web"}, Ready: true},
		{Namespace: "default", Name: "web-2", IPs: []netip.Addr{a("10.244.2.11"), a("fd00::11")}, NodeName: "node2", Labels: map[string]string{"app": "web", "tier": "front"}, Ready: true},
		{Namespace: "default", Name: "web-3", IPs: []netip.Addr{a("10.244.1.12")}, NodeName: "node1", Labels: map[string]string{"app": "web"}, Ready: false},
		{Namespace: "prod", Name: "web-4", IPs: []netip.Addr{a("10.244.1.13")}, NodeName: "node1", Labels: map[string]string{"app": "web"}, Ready: true},
		{Namespace: "default", Name: "api-1", IPs: []netip.Addr{a("10.244.1.14")}, NodeName: "node1", Labels: map[string]string{"app": "api"}, Ready: true},
		{Namespace: "kube-system", Name: "dns-1", IPs: []netip.Addr{a("10.244.1.53")}, NodeName: "node1", Labels: map[string]string{"k8s-app": "kube-dns"}, Ready: true},
	}
}

// TestGoldenStandalone builds the state of deploy/examples/standalone.yaml with a fixed set of
// pods and compares it with testdata/standalone.golden (go test -update rewrites it).
func TestGoldenStandalone(t *testing.T) {
	cfg, err := Load("../deploy/examples/standalone.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.BuildState("", pods(), NewMemAllocator(WithNodePortRange(cfg.NodePortRange)))
	if err != nil {
		t.Fatal(err)
	}
	got := render(st)
	golden := filepath.Join("testdata", "standalone.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantB, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(wantB) {
		t.Errorf("state differs from %s:\n--- got\n%s\n--- want\n%s", golden, got, wantB)
	}

	// Settings and health checks of the example.
	if cfg.NodeName != "node1" || cfg.Mode != ModeAuto || cfg.MinSyncPeriod != time.Second || cfg.SyncPeriod != 30*time.Second {
		t.Errorf("settings: %+v", cfg)
	}
	hc := cfg.HealthChecks()
	want := map[model.ServiceKey]HealthCheck{
		{Namespace: "default", Name: "web"}: {Type: "http", Path: "/healthz", Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3},
		{Namespace: "data", Name: "db"}:     {Type: "tcp", Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3},
	}
	if fmt.Sprint(hc) != fmt.Sprint(want) {
		t.Errorf("HealthChecks() = %v, want %v", hc, want)
	}
}

// TestDefaults checks the defaults of every setting and of a minimal service.
func TestDefaults(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/24
services:
  - name: web
    ports: [{port: 80}]
    endpoints: [{ip: 10.244.1.5}]
`))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Mode", cfg.Mode, ModeAuto},
		{"StateDir", cfg.StateDir, "/var/lib/svcproxy"},
		{"APISocket", cfg.APISocket, "/run/svcproxy/svcproxy.sock"},
		{"MetricsBindAddress", cfg.MetricsBindAddress.String(), "127.0.0.1:10249"},
		{"HealthzBindAddress", cfg.HealthzBindAddress.String(), "0.0.0.0:10256"},
		{"Bridge", cfg.Bridge, "svc0"},
		{"NodePortRange", cfg.NodePortRange, PortRange{30000, 32767}},
		{"MinSyncPeriod", cfg.MinSyncPeriod, time.Second},
		{"SyncPeriod", cfg.SyncPeriod, 30 * time.Second},
		{"IPTablesBackend", cfg.IPTablesBackend, "auto"},
		{"MasqueradeAll", cfg.MasqueradeAll, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	st, err := cfg.BuildState("n1", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	s := st.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	if s == nil {
		t.Fatal("service default/web missing")
	}
	// /24: 254 usable addresses, band offset 16: the first dynamic VIP is .17.
	if s.Type != model.ClusterIP || s.AffinityTimeout != 0 || len(s.ClusterIPs) != 1 || s.ClusterIPs[0] != netip.MustParseAddr("10.96.0.17") {
		t.Errorf("service = %+v", s)
	}
	p := s.Ports[0]
	if p.Protocol != model.TCP || p.Name != "" || len(p.Endpoints) != 1 || p.Endpoints[0].Port != 80 ||
		!p.Endpoints[0].Ready || !p.Endpoints[0].Serving || p.Endpoints[0].Terminating {
		t.Errorf("port = %+v", p)
	}

	// ClientIP without a timeout gets 10800 s.
	cfg, err = Parse("aff.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/24
services:
  - {name: web, sessionAffinity: ClientIP, ports: [{port: 80}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err = cfg.BuildState("n1", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[0].AffinityTimeout; got != 10800*time.Second {
		t.Errorf("AffinityTimeout = %v", got)
	}
}

func TestSelectorMatching(t *testing.T) {
	cfg, err := Parse("sel.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDRs: [10.96.0.0/16, "fd00:96::/112"]
nodes:
  - {name: node2, address: 172.31.0.3, podCIDR: 10.244.2.0/24, zone: z2}
services:
  - name: web
    clusterIP: 10.96.0.10
    ports:
      - {name: http, port: 80, targetPort: 8080}
      - {name: dns, protocol: UDP, port: 53}
    selector: {app: web}
  - name: web6
    ipFamilyPolicy: PreferDualStack
    ports: [{port: 80, targetPort: 8080}]
    selector: {app: web}
  - name: multi
    clusterIP: 10.96.0.11
    ports: [{port: 80}]
    selector: {app: web, tier: front}
  - name: none
    clusterIP: 10.96.0.12
    ports: [{port: 80}]
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.BuildState("node1", pods(), NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	eps := func(name string, port int) []string {
		s := st.Service(model.ServiceKey{Namespace: "default", Name: name})
		if s == nil {
			t.Fatalf("service %s missing", name)
		}
		var out []string
		for _, e := range s.Ports[port].Endpoints {
			out = append(out, fmt.Sprintf("%s@%s/%s", e.AddrPort(), e.NodeName, e.Zone))
		}
		sort.Strings(out)
		return out
	}
	// Same namespace, Ready, labels matching; IPv4 only for a single-stack IPv4 service;
	// target port numeric; zone from the node list.
	check := func(got []string, want ...string) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("endpoints = %v, want %v", got, want)
		}
	}
	check(eps("web", 0), "10.244.1.11:8080@node1/", "10.244.2.11:8080@node2/z2")
	check(eps("web", 1), "10.244.1.11:53@node1/", "10.244.2.11:53@node2/z2")
	check(eps("web6", 0), "10.244.1.11:8080@node1/", "10.244.2.11:8080@node2/z2", "[fd00::11]:8080@node2/z2")
	check(eps("multi", 0), "10.244.2.11:80@node2/z2")
	check(eps("none", 0))
	web6 := st.Service(model.ServiceKey{Namespace: "default", Name: "web6"})
	if len(web6.ClusterIPs) != 2 || !web6.ClusterIPs[0].Is4() || !web6.ClusterIPs[1].Is6() {
		t.Errorf("web6 VIPs = %v", web6.ClusterIPs)
	}
	// The pod goes away: so does the endpoint, and the VIPs stay.
	st2, err := cfg.BuildState("node1", pods()[:1], NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if got := st2.Service(model.ServiceKey{Namespace: "default", Name: "web"}).Ports[0].Endpoints; len(got) != 1 {
		t.Errorf("after pod removal: %v", got)
	}
}

func TestKubernetesDocumentsBesideProxyConfig(t *testing.T) {
	cfg, err := Parse("k8s.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - name: static
    clusterIP: 10.96.0.20
    ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  clusterIP: 10.96.0.30
  selector: {app: api}
  ports:
    - {name: web, port: 80, targetPort: 9000}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: v1
kind: Service
metadata: {name: headless}
spec:
  clusterIP: None
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-x
  namespace: prod
  labels: {kubernetes.io/service-name: api}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-03-04T05:06:07Z"}
addressType: IPv4
ports: [{name: web, port: 9001}]
endpoints:
  - addresses: [10.244.3.3]
    conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: static-x
  labels: {kubernetes.io/service-name: static}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.3.4]
    nodeName: node3
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(cfg.ServiceKeys()); got != "[default/static prod/api default/ext default/headless]" {
		t.Errorf("ServiceKeys = %s", got)
	}
	ps := []model.Pod{{Namespace: "prod", Name: "api-1", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.7")}, Labels: map[string]string{"app": "api"}, Ready: true}}
	st, err := cfg.BuildState("node1", ps, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	got := render(st)
	want := `node node1 zone=""
clusterCIDRs [] podCIDRs [] serviceCIDRs [10.96.0.0/16] nodePortAddresses [] masqueradeAll false
service default/static ClusterIP vips=[10.96.0.20]
  port "http" TCP 80 nodePort=0
    10.244.3.4:8080 node="node3" zone="" ready=true serving=true terminating=false
service prod/api ClusterIP vips=[10.96.0.30] trigger=2026-03-04T05:06:07Z
  port "web" TCP 80 nodePort=0
    10.244.1.7:9000 node="" zone="" ready=true serving=true terminating=false
    10.244.3.3:9001 node="" zone="" ready=false serving=true terminating=true
`
	if got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
}

func TestBuildStateAllocatorConflicts(t *testing.T) {
	const file = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
nodePortRange: 30000-30100
services:
  - name: a
    type: NodePort
    ports: [{port: 80}]
  - name: b
    ports: [{port: 80}]
`
	cfg, err := Parse("a.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	alloc := NewMemAllocator(WithNodePortRange(cfg.NodePortRange))
	st, err := cfg.BuildState("n", nil, alloc)
	if err != nil {
		t.Fatal(err)
	}
	a := st.Service(model.ServiceKey{Namespace: "default", Name: "a"})
	vipA, npA := a.ClusterIPs[0], a.Ports[0].NodePort
	// The second build (a reload) keeps what each service has.
	st, err = cfg.BuildState("n", nil, alloc)
	if err != nil {
		t.Fatal(err)
	}
	a = st.Service(model.ServiceKey{Namespace: "default", Name: "a"})
	if a.ClusterIPs[0] != vipA || a.Ports[0].NodePort != npA {
		t.Errorf("reload changed a: %v %d -> %v %d", vipA, npA, a.ClusterIPs[0], a.Ports[0].NodePort)
	}
	// A new file asks b for a's VIP and node port: refused, naming a, at b's lines.
	cfg2, err := Parse("a.yaml", []byte(strings.Replace(file, "  - name: b\n    ports: [{port: 80}]\n",
		fmt.Sprintf("  - name: b\n    type: NodePort\n    clusterIP: %s\n    ports: [{port: 80, nodePort: %d}]\n", vipA, npA), 1)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg2.BuildState("n", nil, alloc)
	var perr *Error
	if !errors.As(err, &perr) || len(perr.Problems) != 2 {
		t.Fatalf("BuildState error = %v; want two problems", err)
	}
	p0, p1 := perr.Problems[0], perr.Problems[1]
	if p0.Line != 11 || p0.Field != "services[1].clusterIP" || !strings.Contains(p0.Message, "already allocated to service default/a") {
		t.Errorf("problem 0 = %s", p0)
	}
	if p1.Line != 12 || p1.Field != "services[1].ports[0].nodePort" || !strings.Contains(p1.Message, "already allocated to service default/a") {
		t.Errorf("problem 1 = %s", p1)
	}
	// Without WithNodePortRange, the allocator takes the config's range.
	st, err = cfg.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if np := st.Service(model.ServiceKey{Namespace: "default", Name: "a"}).Ports[0].NodePort; np != 30016 {
		t.Errorf("node port from a fresh allocator = %d; want 30016 (band offset 16 of 30000-30100)", np)
	}
	// Once a is gone from the file, b can have them.
	cfg3, err := Parse("a.yaml", []byte(fmt.Sprintf(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
nodePortRange: 30000-30100
services:
  - {name: b, type: NodePort, clusterIP: %s, ports: [{port: 80, nodePort: %d}]}
`, vipA, npA)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg3.BuildState("n", nil, alloc); err != nil {
		t.Errorf("after a left: %v", err)
	}
}

// TestBrokenExample keeps deploy/examples/broken.yaml broken in the ways it shows off.
func TestBrokenExample(t *testing.T) {
	_, err := Load("../deploy/examples/broken.yaml")
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("Load(broken.yaml) = %v; want *Error", err)
	}
	want := []string{
		"6 mode", "8 podCIDR", "13 services[0].clusterIP", "15 services[0].ports[0].targetPort",
		"19 services[1].sessionAffinity", "23 services[1].endpoints[0].ip", "24 services[1].endpoints[1].nodname",
		"29 services[2].ports[0].nodePort", "30 services[2].ports[1].name", "31 services[3].name",
	}
	var got []string
	for _, p := range perr.Problems {
		got = append(got, fmt.Sprintf("%d %s", p.Line, p.Field))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("problems:\n%v\nwant:\n%v\n%v", got, want, err)
	}
}

// TestKubectlExportedObjects loads objects as `kubectl get -o yaml` prints them (server-set
// metadata, managedFields, status) and a dual-stack Service asking for its families.
func TestKubectlExportedObjects(t *testing.T) {
	cfg, err := Parse("kubectl.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDRs: [10.96.0.0/16, "fd00:96::/108"]
---
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service"}
  creationTimestamp: "2026-01-02T03:04:05Z"
  labels: {app: web}
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:ports:
          .: {}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-01-02T03:04:05Z"
  name: web
  namespace: default
  resourceVersion: "1234"
  uid: 5a8c6a64-1111-2222-3333-444455556666
spec:
  internalTrafficPolicy: Cluster
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: PreferDualStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  selector: {app: web}
  sessionAffinity: None
  type: ClusterIP
status:
  conditions:
  - lastTransitionTime: "2026-01-02T03:04:05Z"
    message: ok
    reason: Ok
    status: "True"
    type: Ready
  loadBalancer: {}
`))
	if err != nil {
		t.Fatal(err)
	}
	pod := model.Pod{Namespace: "default", Name: "w", Ready: true, Labels: map[string]string{"app": "web"},
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("fd00:244::2")}}
	st, err := cfg.BuildState("n", []model.Pod{pod}, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	s := st.Services[0]
	if got := fmt.Sprint(s.ClusterIPs); got != "[fd00:96::101 10.96.1.1]" {
		t.Errorf("VIPs = %s; want IPv6 first, as ipFamilies says", got)
	}
	if got := fmt.Sprint(s.Ports[0].Endpoints); got != "[10.244.1.2:8080 [fd00:244::2]:8080]" {
		t.Errorf("endpoints = %s", got)
	}

	// A bad timestamp and a bad managedFields entry are reported where they are.
	_, err = Parse("bad.yaml", []byte(`apiVersion: v1
kind: Service
metadata:
  name: web
  creationTimestamp: yesterday
  labels: [a]
spec:
  clusterIP: 10.96.0.1
  ports: [{port: 80, targetPort: {x: 1}}]
`))
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, p := range perr.Problems {
		got = append(got, fmt.Sprintf("%d %s", p.Line, p.Field))
	}
	if want := "[5 metadata.creationTimestamp 6 metadata.labels 9 spec.ports[0].targetPort]"; fmt.Sprint(got) != want {
		t.Errorf("problems %v, want %s\n%v", got, want, err)
	}
}
