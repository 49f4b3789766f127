package config

import (
	"fmt"
	"strings"
	"testing"
)

// bigFile returns a ProxyConfig with n services of two static endpoints each, and n/2
// Kubernetes Service documents with an EndpointSlice each.
func bigFile(n int) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nserviceCIDR: 10.96.0.0/12\nservices:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - name: s%d\n    ports: [{name: http, port: 80, targetPort: 8080}]\n    endpoints: [{ip: 10.244.%d.%d}, {ip: 10.245.%d.%d}]\n",
			i, i/250, i%250+1, i/250, i%250+1)
	}
	for i := 0; i < n/2; i++ {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata: {name: k%d}\nspec:\n  ports: [{name: http, port: 80}]\n", i)
		fmt.Fprintf(&b, "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: k%d-1, labels: {kubernetes.io/service-name: k%d}}\naddressType: IPv4\nports: [{name: http, port: 80}]\nendpoints: [{addresses: [10.246.%d.%d]}]\n",
			i, i, i/250, i%250+1)
	}
	return []byte(b.String())
}

func BenchmarkParse10k(b *testing.B) {
	data := bigFile(10000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("big.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBuildState10k(b *testing.B) {
	cfg, err := Parse("big.yaml", bigFile(10000))
	if err != nil {
		b.Fatal(err)
	}
	alloc := NewMemAllocator()
	for b.Loop() {
		if _, err := cfg.BuildState("n", nil, alloc); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBigFile(t *testing.T) {
	cfg, err := Parse("big.yaml", bigFile(2000))
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 3000 || st.EndpointCount() != 2*2000+1000 {
		t.Errorf("services %d endpoints %d", len(st.Services), st.EndpointCount())
	}
}
