package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// want is one expected problem: its line, its field, and a piece of its message.
type want struct {
	line  int
	field string
	msg   string
}

func (w want) String() string { return fmt.Sprintf("%d %s: ~%q", w.line, w.field, w.msg) }

// TestBrokenFiles parses broken files and checks that every problem is reported, each at its
// exact line and field, and nothing else.
func TestBrokenFiles(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []want
	}{
		{
			name: "unknown fields at any depth",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
bogus: 1
iptables: {backend: nft, extra: x}
services:
  - name: web
    prots: []
    ports:
      - {port: 80, tragetPort: 8080}
    healthCheck: {type: tcp, interval: 2}
    Selector: {app: web}
`,
			want: []want{
				{4, "bogus", `unknown field "bogus"`},
				{5, "iptables.extra", `unknown field "extra"`},
				{8, "services[0].prots", `unknown field "prots"`},
				{10, "services[0].ports[0].tragetPort", `unknown field "tragetPort"`},
				{11, "services[0].healthCheck.interval", `unknown field "interval"`},
				{12, "services[0].Selector", `did you mean "selector"?`},
			},
		},
		{
			name: "settings",
			yaml: `apiVersion: svcproxy.io/v1alpha2
kind: ProxyConfig
nodeName: Node_1
mode: fast
clusterCIDR: 10.244.0.0/16
podCIDR: 10.245.1.0/24
serviceCIDR: 10.96.0.1/16
nodePortRange: 32767-30000
nodePortAddresses: [192.168.0.0/16, nope]
bridge: a-very-long-bridge0
metricsBindAddress: localhost:10249
healthzBindAddress: 0.0.0.0
stateDir: var/lib/svcproxy
minSyncPeriod: 1x
syncPeriod: 0s
iptables: {backend: xtables}
masqueradeAll: maybe
`,
			want: []want{
				{1, "apiVersion", "must be svcproxy.io/v1alpha1"},
				{3, "nodeName", "not a valid name"},
				{4, "mode", `must be auto, iptables or ebpf, not "fast"`},
				{6, "podCIDR", "10.245.1.0/24 is outside clusterCIDR 10.244.0.0/16"},
				{7, "serviceCIDR", "host bits set (did you mean 10.96.0.0/16?)"},
				{8, "nodePortRange", "the first port is above the last"},
				{9, "nodePortAddresses[1]", `invalid CIDR "nope"`},
				{10, "bridge", "longer than 15 bytes"},
				{11, "metricsBindAddress", "not IP:port"},
				{12, "healthzBindAddress", "not IP:port"},
				{13, "stateDir", "must be an absolute path"},
				{14, "minSyncPeriod", "not a duration"},
				{15, "syncPeriod", "must be positive"},
				{16, "iptables.backend", `must be auto, nft or legacy, not "xtables"`},
				{17, "masqueradeAll", "must be true or false"},
			},
		},
		{
			name: "nodes and dual-stack ranges",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
nodeName: node1
clusterCIDRs: [10.244.0.0/16, 10.245.0.0/16]
podCIDR: 10.244.1.0/24
serviceCIDRs: [10.96.0.0/16, 10.244.128.0/17, "fd00::/120"]
nodes:
  - {name: node2, address: 172.31.0.300, podCIDR: 10.244.1.0/24}
  - {name: node2, address: 172.31.0.4, podCIDR: 10.244.3.0/24}
  - {name: Node_3, podCIDR: 10.0.0.0/24}
  - {name: node1, address: 172.31.0.2, podCIDR: 10.244.9.0/24}
  - {name: node5, address: 172.31.0.4, podCIDRs: [10.244.5.0/24, 10.244.5.128/25]}
  - {name: node6, address: 172.31.0.6}
`,
			want: []want{
				{4, "clusterCIDRs", "at most two ranges, one IPv4 and one IPv6"},
				{6, "serviceCIDRs", "at most two ranges"},
				{6, "serviceCIDRs[1]", "10.244.128.0/17 overlaps clusterCIDR 10.244.0.0/16"},
				{8, "nodes[0].address", `invalid IP address "172.31.0.300"`},
				{8, "nodes[0].podCIDR", "overlaps 10.244.1.0/24 (podCIDR at line 5)"},
				{9, "nodes[1].name", `duplicate node "node2" (first at line 8)`},
				{10, "nodes[2].name", "not a valid name"},
				{10, "nodes[2].address", "required"},
				{10, "nodes[2].podCIDR", "outside clusterCIDR"},
				{11, "nodes[3].podCIDR", "differs from the top-level podCIDR"},
				{12, "nodes[4].address", "also the address of nodes[1]"},
				{12, "nodes[4].podCIDRs", "at most two ranges"},
				{12, "nodes[4].podCIDRs[1]", "overlaps 10.244.5.0/24"},
				{13, "nodes[5]", "podCIDR is required"},
			},
		},
		{
			name: "services",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
nodePortRange: 30000-30100
services:
  - name: web
    clusterIP: 10.97.0.1
    type: Cluster
    sessionAffinity: Sticky
    externalTrafficPolicy: Remote
    internalTrafficPolicy: Nearby
    trafficDistribution: Anywhere
    ports:
      - {name: http, port: 80, protocol: HTTP}
      - {name: http, port: 70000}
      - {port: 81, nodePort: 30080}
  - name: web
    clusterIP: 10.96.0.10
    ports: [{port: 80}]
  - name: api
    type: NodePort
    clusterIP: 10.96.0.10
    sessionAffinityTimeoutSeconds: 100000
    healthCheckNodePort: 30001
    loadBalancerIPs: [192.0.2.1]
    ports:
      - {name: a, port: 80, nodePort: 31000}
      - {name: b, port: 80}
      - {name: c, port: 90, targetPort: web}
      - {name: d, port: 91, targetPort: 0x10000, nodePort: 30050}
      - {name: E, port: 92, nodePort: 30050}
    selector: {app: api, "bad key!": x}
  - name: 9lives
    namespace: Bad_NS
    ports: []
  - namespace: x
    ports: [{port: 1}]
  - name: headless
    clusterIP: None
    ports: [{port: 1}]
  - name: local
    externalTrafficPolicy: Local
    clusterIPs: [10.96.0.20, 10.96.0.21]
    ports: [{port: 1, targetPort: x}]
`,
			want: []want{
				{7, "services[0].clusterIP", "VIP 10.97.0.1 is outside serviceCIDR 10.96.0.0/16"},
				{8, "services[0].type", `must be ClusterIP, NodePort or LoadBalancer, not "Cluster"`},
				{9, "services[0].sessionAffinity", `must be None or ClientIP, not "Sticky"`},
				{10, "services[0].externalTrafficPolicy", `must be Cluster or Local, not "Remote"`},
				{11, "services[0].internalTrafficPolicy", `must be Cluster or Local, not "Nearby"`},
				{12, "services[0].trafficDistribution", `not "Anywhere"`},
				{14, "services[0].ports[0].protocol", `must be TCP, UDP or SCTP, not "HTTP"`},
				{15, "services[0].ports[1].name", `duplicate port name "http" (first at line 14)`},
				{15, "services[0].ports[1].port", "70000 is not a port"},
				{16, "services[0].ports[2].name", "required when a service has more than one port"},
				{16, "services[0].ports[2].nodePort", "only for type NodePort or LoadBalancer"},
				{17, "services[1].name", "duplicate service default/web (first at line 6)"},
				{22, "services[2].clusterIP", "VIP 10.96.0.10 is also the clusterIP of the service at line 18"},
				{23, "services[2].sessionAffinityTimeoutSeconds", "100000 is not within 1-86400 seconds"},
				{23, "services[2].sessionAffinityTimeoutSeconds", "only with sessionAffinity ClientIP"},
				{24, "services[2].healthCheckNodePort", "only for type LoadBalancer with externalTrafficPolicy Local"},
				{25, "services[2].loadBalancerIPs", "only for type LoadBalancer"},
				{27, "services[2].ports[0].nodePort", "31000 is outside nodePortRange 30000-30100"},
				{28, "services[2].ports[1].port", "duplicate port 80/TCP (first at line 27)"},
				{29, "services[2].ports[2].targetPort", `named targetPort "web" cannot be resolved`},
				{30, "services[2].ports[3].targetPort", "65536 is not a port"},
				{31, "services[2].ports[4].name", "not a valid name"},
				{31, "services[2].ports[4].nodePort", "node port 30050 is also used at line 30"},
				{32, "services[2].selector.bad key!", "label key"},
				{33, "services[3].name", "not a valid name"},
				{34, "services[3].namespace", "not a valid name"},
				{35, "services[3].ports", "at least one port is required"},
				{36, "services[4].name", "required"},
				{39, "services[5].clusterIP", "headless services (clusterIP None) have no VIP"},
				{42, "services[6].externalTrafficPolicy", "Local only applies to NodePort and LoadBalancer"},
				{43, "services[6].clusterIPs", "at most two VIPs, one IPv4 and one IPv6"},
			},
		},
		{
			name: "endpoints and health check",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - name: db
    ports: [{port: 5432}]
    endpoints:
      - {ip: 10.244.1.300}
      - {ip: 127.0.0.1}
      - {ip: "fd00::1"}
      - {ip: 10.244.1.5, ready: true, terminating: true}
      - {ip: 10.244.1.5, ready: false, nodeName: "-bad-"}
      - {nodeName: n1}
      - {ip: 169.254.0.1, ready: yes}
    healthCheck: {type: udp, port: 70000, intervalSeconds: 1, timeoutSeconds: 5, healthyThreshold: 0}
  - name: web
    ports: [{port: 80}]
    healthCheck: {type: http, path: healthz}
  - name: tcp
    ports: [{port: 80}]
    healthCheck: {path: /x}
`,
			want: []want{
				{8, "services[0].endpoints[0].ip", `invalid IP address "10.244.1.300"`},
				{9, "services[0].endpoints[1].ip", "loopback"},
				{10, "services[0].endpoints[2].ip", "IP family the service has no VIP of"},
				{11, "services[0].endpoints[3].terminating", "a terminating endpoint cannot be ready"},
				{12, "services[0].endpoints[4].ip", "duplicate endpoint 10.244.1.5 (first at line 11)"},
				{12, "services[0].endpoints[4].nodeName", "not a valid name"},
				{13, "services[0].endpoints[5].ip", "required"},
				{14, "services[0].endpoints[6].ip", "link-local"},
				{14, "services[0].endpoints[6].ready", "must be true or false"},
				{15, "services[0].healthCheck.type", `must be tcp or http, not "udp"`},
				{15, "services[0].healthCheck.port", "70000 is not a port"},
				{15, "services[0].healthCheck.timeoutSeconds", "5 is longer than intervalSeconds 1"},
				{15, "services[0].healthCheck.healthyThreshold", "0 is not within 1-100"},
				{18, "services[1].healthCheck.path", `"healthz" must start with /`},
				{21, "services[2].healthCheck.type", "required: tcp or http"},
			},
		},
		{
			name: "kubernetes documents",
			yaml: `apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  type: NodePort
  clusterIP: 10.96.0.500
  ports:
    - port: 80
      nodePort: 99
      protokol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  labels: {kubernetes.io/service-name: nope}
addressType: IPv4
endpoints:
  - addresses: ["fd00::1"]
ports:
  - port: 0
---
apiVersion: v1
kind: ConfigMap
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {name: x}
addressType: IPX
endpoints:
  - addresses: []
    conditions: {ready: "yes"}
---
apiVersion: apps/v1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: "eighty"}]
  selector: {app: api}
  externalIPs: [1.2.3]
`,
			want: []want{
				{7, "spec.clusterIP", `invalid IP address "10.96.0.500"`},
				{10, "spec.ports[0].nodePort", "99 is outside nodePortRange 30000-32767"},
				{11, "spec.ports[0].protokol", `unknown field "protokol"`},
				{17, "metadata.labels.kubernetes.io/service-name", "no service default/nope in this file"},
				{20, "endpoints[0].addresses[0]", "fd00::1 is not an IPv4 address"},
				{22, "ports[0].port", "0 is not a port"},
				{25, "kind", `unsupported kind "ConfigMap"`},
				{29, "metadata.labels", "label kubernetes.io/service-name is required"},
				{30, "addressType", `must be IPv4, IPv6 or FQDN, not "IPX"`},
				{32, "endpoints[0]", "at least one address is required"},
				{33, "endpoints[0].conditions.ready", "must be true or false"},
				{35, "apiVersion", "must be v1 for kind Service"},
				{37, "metadata.name", "duplicate service default/api (first at line 4)"},
				{39, "spec.ports[0].port", "must be an integer"},
				{41, "spec.externalIPs[0]", `invalid IP address "1.2.3"`},
				{38, "spec.clusterIP", "no clusterIP given and no serviceCIDR"},
			},
		},
		{
			name: "duplicate keys and two ProxyConfigs",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
mode: auto
mode: ebpf
---
apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
---
- just a list
---
metadata: {name: x}
`,
			want: []want{
				{4, "mode", `field "mode" given twice (first at line 3)`},
				{7, "kind", "at most one ProxyConfig (the first is at line 1)"},
				{9, "", "a document must be a mapping"},
				{11, "kind", "missing"},
			},
		},
		{
			name: "a refused value is reported once",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - name: web
    ports: [5, {port: 80, name: b}]
  - name: [x]
    ports: [{port: 81}]
  - web
`,
			want: []want{
				{6, "services[0].ports[0]", "must be a mapping, not 5"},
				{7, "services[1].name", "must be a string, not a list"},
				{9, "services[2]", "must be a mapping"},
			},
		},
		{
			name: "YAML syntax",
			yaml: `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
services:
  - name: web
    ports: [{port: 80}]
    selector: {app: "web}
`,
			want: []want{{6, "", "invalid YAML"}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("test.yaml", []byte(c.yaml))
			if cfg != nil {
				t.Errorf("Parse returned a config for a broken file")
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("Parse error = %v (%T), want *Error", err, err)
			}
			matched := make([]bool, len(perr.Problems))
			for _, w := range c.want {
				found := false
				for i, p := range perr.Problems {
					if !matched[i] && p.Line == w.line && p.Field == w.field && strings.Contains(p.Message, w.msg) {
						matched[i], found = true, true
						break
					}
				}
				if !found {
					t.Errorf("missing problem %v", w)
				}
			}
			for i, p := range perr.Problems {
				if !matched[i] {
					t.Errorf("unexpected problem %s", p)
				}
				if p.File != "test.yaml" || p.Column < 1 {
					t.Errorf("problem %s: bad file or column", p)
				}
			}
			if t.Failed() {
				t.Logf("all problems:\n%v", err)
			}
		})
	}
}

func TestProblemRendering(t *testing.T) {
	e := &Error{Problems: []Problem{
		{File: "a.yaml", Line: 3, Column: 5, Field: "mode", Message: "bad"},
		{File: "a.yaml", Line: 9, Column: 1, Message: "invalid YAML"},
	}}
	want := "a.yaml:3:5: mode: bad\na.yaml:9:1: invalid YAML"
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
}

func TestLoadMissingFileIsNotAProblemList(t *testing.T) {
	_, err := Load("/nonexistent/svcproxy.yaml")
	var perr *Error
	if err == nil || errors.As(err, &perr) {
		t.Errorf("Load(missing) = %v; want a plain read error", err)
	}
}

func TestMergeKeysAndAnchors(t *testing.T) {
	cfg, err := Parse("anchors.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - &base
    name: a
    sessionAffinity: ClientIP
    ports: [{port: 80}]
    endpoints: [{ip: 10.244.1.1}]
  - <<: *base
    name: b
    ports: [{port: 81, tragetPort: 1}]
`))
	var perr *Error
	if !errors.As(err, &perr) || len(perr.Problems) != 1 || perr.Problems[0].Line != 12 || perr.Problems[0].Field != "services[1].ports[0].tragetPort" {
		t.Fatalf("err = %v; want only the unknown field at line 12", err)
	}
	cfg, err = Parse("anchors.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - &base
    name: a
    sessionAffinity: ClientIP
    ports: [{port: 80}]
  - <<: *base
    name: b
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 2 || st.Services[1].Key.Name != "b" || st.Services[1].AffinityTimeout == 0 || st.Services[1].Ports[0].Port != 80 {
		t.Errorf("merged service = %+v", st.Services[1])
	}
}
