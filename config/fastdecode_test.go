package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// slowDecode is the walker's reading of root as type t: the generic value, then the JSON round
// trip, as decodeNode did before the direct reader. It returns the value and the problems.
func slowDecode(t *testing.T, root *yaml.Node, typ reflect.Type) (any, []Problem) {
	t.Helper()
	probs := &problemList{}
	d := &doc{file: "x.yaml", probs: probs, root: root, typ: typ}
	out := reflect.New(typ).Interface()
	v := walk(d, root, typ, "")
	if v != nil {
		b, err := json.Marshal(v)
		if err == nil {
			err = json.Unmarshal(b, out)
		}
		if err != nil {
			probs.add(Problem{Message: err.Error()})
		}
	}
	return out, probs.list
}

func typeOfKind(kind string) reflect.Type {
	switch kind {
	case Kind:
		return reflect.TypeOf(rawConfig{})
	case "Service":
		return reflect.TypeOf(corev1.Service{})
	case "EndpointSlice":
		return reflect.TypeOf(discoveryv1.EndpointSlice{})
	}
	return nil
}

// compareReaders reads every document of data with the direct reader and with the walker: the
// direct reader must give up on every document the walker finds a problem in, and read every
// other one into exactly what the walker and encoding/json make of it. It returns how many
// documents the direct reader read.
func compareReaders(t *testing.T, name string, data []byte) (read, total int) {
	t.Helper()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for i := 0; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", name, i, err)
		}
		root := n.Content[0]
		var kind string
		for j := 0; j+1 < len(root.Content); j += 2 {
			if root.Content[j].Value == "kind" {
				kind = root.Content[j+1].Value
			}
		}
		typ := typeOfKind(kind)
		if typ == nil {
			continue
		}
		total++
		slow, probs := slowDecode(t, root, typ)
		fast := reflect.New(typ)
		ok := fastDecode(fastCache{}, root, fast.Elem())
		switch {
		case ok && len(probs) > 0:
			t.Errorf("%s: document %d: the direct reader accepted what the walker refuses: %v", name, i, probs)
		case ok && !reflect.DeepEqual(fast.Interface(), slow):
			fj, _ := json.Marshal(fast.Interface())
			sj, _ := json.Marshal(slow)
			t.Errorf("%s: document %d: direct reader\n%s\nwalker\n%s\n%#v\n%#v", name, i, fj, sj, fast.Interface(), slow)
		case ok:
			read++
		}
	}
	return read, total
}

// validDocs exercises what the direct reader handles itself: every scalar kind, pointers,
// maps with null values, empty lists and maps, anchors and merge keys, integers in other
// notations, IntOrString both ways, json.Unmarshaler types (timestamps, managedFields).
const validDocs = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
nodeName: node1
zone: z1
mode: ebpf
clusterCIDRs: [10.244.0.0/16]
podCIDR: 10.244.1.0/24
serviceCIDRs: [10.96.0.0/16, "fd00:96::/108"]
nodePortRange: 30000-32767
nodePortAddresses: []
masqueradeAll: True
minSyncPeriod: 1s
iptables: {backend: nft}
ebpf: {cgroupPath: /sys/fs/cgroup, interfaces: [eth0, null]}
ipam: {podCooldown: 30s}
nodes:
  - {name: node2, address: 172.31.0.2, podCIDRs: [10.244.2.0/24], zone: z2}
  - ~
services:
  - &base
    name: a
    namespace: ns
    type: NodePort
    sessionAffinity: ClientIP
    sessionAffinityTimeoutSeconds: 0x10
    healthCheckNodePort: 0
    ports:
      - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
      - {name: dns, protocol: UDP, port: 53, targetPort: dns}
      - {port: 81, targetPort: "8081"}
    selector: {app: web, tier: null, "x.y/z": "1"}
    endpoints:
      - {ip: 10.244.1.1, nodeName: node1, ready: true, serving: false, terminating: FALSE, zoneHints: [z1]}
      - {ip: "fd00:244::1", nodeHints: []}
    healthCheck: {type: http, port: 8080, path: /healthz, intervalSeconds: 5, timeoutSeconds: -1}
  - <<: *base
    name: b
    clusterIP: 10.96.0.10
    endpoints: ~
  - name: c
    ports: [{port: 1_000}]
    externalIPs: [1.2.3.4]
---
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service"}
    empty: null
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
  generation: 3
  uid: 5a8c6a64-1111-2222-3333-444455556666
spec:
  internalTrafficPolicy: Cluster
  ipFamilies: [IPv6, IPv4]
  ipFamilyPolicy: PreferDualStack
  allocateLoadBalancerNodePorts: false
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    appProtocol: http
  - name: named
    port: 81
    targetPort: web
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  type: ClusterIP
status:
  conditions:
  - lastTransitionTime: "2026-01-02T03:04:05Z"
    message: ok
    reason: Ok
    status: "True"
    type: Ready
    observedGeneration: 2
  loadBalancer: {ingress: [{ip: 1.2.3.4, ports: [{port: 80, protocol: TCP}]}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: null}]
endpoints:
  - addresses: [10.244.1.2]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node1
    zone: z1
    hints: {forZones: [{name: z1}]}
    targetRef: {kind: Pod, namespace: default, name: web-1}
    deprecatedTopology: {a: b}
  - addresses: ["10.244.1.3"]
`

// brokenDocs holds documents the walker finds problems in.
var brokenDocs = []string{
	"apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: [x]}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: {x: 1}}]}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a, creationTimestamp: yesterday}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 3000000000}]}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, Port: 81}]}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a, name: b}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {x: 1, x: 2}}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a, labels: {x: {y: z}}}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {allocateLoadBalancerNodePorts: yes}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: \"80\"}]}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: {port: 80}}\n",
	"apiVersion: v1\nkind: Service\nmetadata: {name: [a]}\n",
	"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nendpoints: [{addresses: 10.0.0.1}]\n",
	"apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nservices: [{name: a, ports: [{port: 80, tragetPort: 1}]}]\n",
	"apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nmasqueradeAll: 1\n",
	"apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nservices: [{name: a, sessionAffinityTimeoutSeconds: 1.5}]\n",
	"apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nservices: [{name: a, ports: [{port: 80, targetPort: [1]}]}]\n",
	"apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nservices: [{name: a, healthCheck: {port: 99999999999999999999}}]\n",
}

func TestDirectReaderMatchesWalker(t *testing.T) {
	read, total := compareReaders(t, "valid", []byte(validDocs))
	if total != 3 || read != total {
		t.Errorf("the direct reader read %d of %d valid documents; want all 3", read, total)
	}
	if read, total := compareReaders(t, "big", bigFile(40)); read != total || total != 41 {
		t.Errorf("the direct reader read %d of %d documents of bigFile; want all 41", read, total)
	}
	for _, f := range []string{"../deploy/examples/standalone.yaml", "../deploy/examples/demo.yaml", "../deploy/examples/broken.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		compareReaders(t, f, data)
	}
	for i, b := range brokenDocs {
		if read, total := compareReaders(t, "broken", []byte(b)); total != 1 || read != 0 {
			t.Errorf("broken document %d: read %d of %d\n%s", i, read, total, b)
		}
	}
}

// TestDirectReaderFallsBackWithSameProblems: a file with problems gives the problems the walker
// finds (the direct reader gives up on the document and the walker reads it again).
func TestDirectReaderFallsBackWithSameProblems(t *testing.T) {
	_, err := Parse("b.yaml", []byte(strings.Join(brokenDocs, "---\n")))
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("err = %v", err)
	}
	lines := map[int]bool{}
	for _, p := range perr.Problems {
		lines[p.Line] = true
	}
	// One document per brokenDocs entry, each with at least one problem on its own lines.
	start := 1
	for i, b := range brokenDocs {
		n := strings.Count(b, "\n")
		found := false
		for l := start; l < start+n; l++ {
			found = found || lines[l]
		}
		if !found {
			t.Errorf("no problem reported in broken document %d (lines %d-%d):\n%s\n%v", i, start, start+n-1, b, err)
		}
		start += n + 1
	}
}

// allPositions records the position of every path the walker meets in n, as the walker did
// before positions were found lazily (the reference for where).
func allPositions(d *doc, n *yaml.Node, t reflect.Type, path string, at map[string]pos) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == intOrStringType || reflect.PointerTo(t).Implements(jsonUnmarshalType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return
		}
		seen := map[string]bool{}
		for _, kv := range pairs(n) {
			k, v := kv[0], kv[1]
			if seen[k.Value] {
				continue
			}
			seen[k.Value] = true
			kp := join(path, k.Value)
			at[kp] = pos{k.Line, k.Column}
			if f, ok := d.structFields(t)[k.Value]; ok && k.Kind == yaml.ScalarNode {
				allPositions(d, v, f.typ, kp, at)
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		seen := map[string]bool{}
		for _, kv := range pairs(n) {
			k, v := kv[0], kv[1]
			if seen[k.Value] {
				continue
			}
			kp := join(path, k.Value)
			at[kp] = pos{k.Line, k.Column}
			if k.Kind == yaml.ScalarNode {
				seen[k.Value] = true
				allPositions(d, v, t.Elem(), kp, at)
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for i, item := range n.Content {
			ip := index(path, i)
			at[ip] = pos{item.Line, item.Column}
			allPositions(d, item, t.Elem(), ip, at)
		}
	}
}

// largeMappings returns documents whose mappings are large enough for where to look into them
// through their key index: keys given twice, keys with dots, keys that are no scalars, aliases
// as keys, merge keys, in structs and in maps.
func largeMappings() string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations.k1: before\n  labels: &big\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "    k%d: v\n    k%d.x: v\n", i, i)
	}
	b.WriteString("    k3: again\n    ? [k5]\n    : v\n    ? {k6: 1}\n    : v\n    \"\": empty\n    k7.x.y: v\n")
	b.WriteString("    ? &kk k8\n    : v\n    ? *kk\n    : w\n    ? [seq]\n    : v\n")
	b.WriteString("  annotations:\n    <<: *big\n    k1: own\n    k40: own\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "  extra%d: x\n", i)
	}
	b.WriteString("  name: twice\n  ? [name]\n  : v\n  labels.k1: after\n  labels.k1.x: after\n")
	b.WriteString("spec:\n  <<: {ports: [{port: 80}], selector: *big}\n  type: ClusterIP\n")
	b.WriteString("---\napiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nservices:\n  - &s\n    name: a\n    selector: {")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "s%d: v, ", i)
	}
	b.WriteString("s0: again}\n  - {<<: *s, name: b}\n  - <<: [*s, {name: c, ports: [{port: 1}]}]\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&b, "    f%d: x\n", i)
	}
	return b.String()
}

// TestWhereMatchesFullPositionMap: where, which walks down one branch, finds for every path
// (and below it, and for paths the file does not have) what the map of all positions gives.
func TestWhereMatchesFullPositionMap(t *testing.T) {
	files := append([]string{validDocs, string(bigFile(12)), `apiVersion: v1
kind: Service
metadata:
  name: a
  name: b
  labels: {a: "1", a.b: "2", "c[0]": "3", a: "4"}
  annotations: &ann {x: y}
spec:
  selector: *ann
  ports: [{port: 80, port: 81}, [1], {name: x, targetPort: {a: b}}]
  clusterIPs: [a, b, c, d, e, f, g, h, i, j, k, l]
`, largeMappings()}, brokenDocs...)
	checked := 0
	for fi, f := range files {
		dec := yaml.NewDecoder(strings.NewReader(f))
		for {
			var n yaml.Node
			if err := dec.Decode(&n); err != nil {
				break
			}
			root := n.Content[0]
			var kind string
			for j := 0; j+1 < len(root.Content); j += 2 {
				if root.Content[j].Value == "kind" {
					kind = root.Content[j+1].Value
				}
			}
			typ := typeOfKind(kind)
			d := &doc{start: pos{root.Line, root.Column}, root: root, typ: typ}
			all := map[string]pos{}
			allPositions(d, root, typ, "", all)
			wantAt := func(path string) pos {
				for p := path; ; {
					if a, ok := all[p]; ok {
						return a
					}
					i := strings.LastIndexAny(p, ".[")
					if i <= 0 {
						return d.start
					}
					p = p[:i]
				}
			}
			paths := []string{"", "nothing", "spec.ports[99].x", "services[1000].name"}
			for p := range all {
				paths = append(paths, p, p+".x", p+"[0]", p+"[1].y")
			}
			for _, p := range paths {
				if got, want := d.where(p), wantAt(p); got != want {
					t.Errorf("file %d: where(%q) = %v, want %v", fi, p, got, want)
				}
				checked++
			}
		}
	}
	if checked < 1000 {
		t.Errorf("only %d paths checked", checked)
	}
}

// keptFile is a valid file whose services ask BuildState for every kind of item.
const keptFile = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDRs: [10.96.0.0/16, "fd00:96::/108"]
nodePortRange: 30000-32767
services:
  - name: a
    ports: [{port: 80}]
  - name: b
    type: NodePort
    clusterIPs: [10.96.0.20, "fd00:96::20"]
    ports:
      - {name: http, port: 80, nodePort: 30080}
      - {name: dns, port: 53, protocol: UDP}
  - name: c
    type: LoadBalancer
    externalTrafficPolicy: Local
    healthCheckNodePort: 31000
    clusterIP: 10.96.0.30
    ports: [{port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: k, namespace: ns}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  ports: [{name: x, port: 80, nodePort: 30090}, {name: y, port: 81}]
---
apiVersion: v1
kind: Service
metadata: {name: l}
spec:
  clusterIPs: [10.96.0.40]
  ports: [{port: 80}]
`

// TestKeptPositions: once Parse lets go of the node trees, where still answers for every path
// BuildState may report at what the full position map gives.
func TestKeptPositions(t *testing.T) {
	cfg, err := Parse("k.yaml", []byte(keptFile))
	if err != nil {
		t.Fatal(err)
	}
	var roots []*yaml.Node
	dec := yaml.NewDecoder(strings.NewReader(keptFile))
	for {
		var n yaml.Node
		if dec.Decode(&n) != nil {
			break
		}
		roots = append(roots, n.Content[0])
	}
	checked := 0
	for _, e := range cfg.services {
		if e.d.root != nil || e.d.kept == nil {
			t.Fatalf("%s: the document still holds its node tree", e.key)
		}
		root := roots[e.d.index]
		all := map[string]pos{}
		allPositions(e.d, root, e.d.typ, "", all)
		for _, p := range e.allocPaths() {
			want := e.d.start
			for q := p; ; {
				if a, ok := all[q]; ok {
					want = a
					break
				}
				i := strings.LastIndexAny(q, ".[")
				if i <= 0 {
					break
				}
				q = q[:i]
			}
			if got := e.d.where(p); got != want {
				t.Errorf("%s: where(%q) = %v, want %v", e.key, p, got, want)
			}
			checked++
		}
	}
	if checked < 12 {
		t.Errorf("only %d paths checked", checked)
	}
}
