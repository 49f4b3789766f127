package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// Image references the bench imports (make image builds them).
const (
	SvcproxyImage = "localhost/svcproxy:dev"
	WorkloadImage = "localhost/svcproxy-workload:dev"
)

// substitution is one edit a user makes to a shipped manifest before applying it (README:
// set the image, the cluster's CIDRs and the API endpoint). Each must match, or the manifest
// changed under the bench and the bench says so instead of deploying something else.
type substitution struct{ file, old, new string }

// Manifests returns deploy/kubernetes/*.yaml as a user would apply them on this cluster:
// the image set, the service CIDR set to the cluster's, and the mode set.
func Manifests(mode, image string) (map[string]string, error) {
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, f := range []string{"rbac.yaml", "configmap.yaml", "daemonset.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "deploy", "kubernetes", f))
		if err != nil {
			return nil, err
		}
		out[f] = string(b)
	}
	subs := []substitution{
		{"configmap.yaml", "serviceCIDR: 10.96.0.0/12", "serviceCIDR: " + harness.ServiceCIDR},
		{"configmap.yaml", "clusterCIDR: 10.244.0.0/16", "clusterCIDR: " + harness.ClusterCIDR},
		{"configmap.yaml", "mode: auto", "mode: " + mode},
		{"daemonset.yaml", "image: svcproxy:latest", "image: " + image},
	}
	for _, s := range subs {
		if !strings.Contains(out[s.file], s.old) {
			return nil, fmt.Errorf("deploy/kubernetes/%s no longer contains %q: update the bench's substitutions (and README's instructions)", s.file, s.old)
		}
		out[s.file] = strings.ReplaceAll(out[s.file], s.old, s.new)
	}
	return out, nil
}

// APIServerConfigMap is the ConfigMap README tells a user to create: where svcproxy reaches
// kube-apiserver without the kubernetes Service VIP (which svcproxy itself programs).
func APIServerConfigMap() string {
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: svcproxy-apiserver, namespace: kube-system}
data: {host: %q, port: "%d"}
`, harness.ControlPlaneIP, harness.APIServerPort)
}

// DeploySvcproxy applies the shipped manifests for mode (iptables or ebpf) and waits until
// the DaemonSet's pods are Ready on every node and every node is Ready. Applying again with
// another mode changes the ConfigMap; the caller restarts the DaemonSet.
func (b *Bench) DeploySvcproxy(mode, image string) {
	b.t.Helper()
	ms, err := Manifests(mode, image)
	if err != nil {
		b.t.Fatal(err)
	}
	b.MustKubectl(APIServerConfigMap(), "apply", "-f", "-")
	for _, f := range []string{"rbac.yaml", "configmap.yaml", "daemonset.yaml"} {
		b.MustKubectl(ms[f], "apply", "-f", "-")
	}
	b.WaitDaemonSet(4 * time.Minute)
	b.WaitNodesReady(2 * time.Minute)
}

// WaitDaemonSet waits for the svcproxy DaemonSet's rollout to finish.
func (b *Bench) WaitDaemonSet(timeout time.Duration) {
	b.t.Helper()
	if out, err := b.Kubectl("", "-n", "kube-system", "rollout", "status", "ds/svcproxy", fmt.Sprintf("--timeout=%s", timeout)); err != nil {
		b.t.Fatalf("realnode: svcproxy DaemonSet not rolled out: %v\n%s\n%s", err, out, b.Describe("kube-system", "app.kubernetes.io/name=svcproxy"))
	}
}

// Describe returns what a person debugging would look at: pods with their nodes and states,
// recent events, and the logs of the pods matching selector in namespace.
func (b *Bench) Describe(namespace, selector string) string {
	var sb strings.Builder
	out, _ := b.Kubectl("", "get", "pods", "-A", "-o", "wide")
	sb.WriteString(out)
	out, _ = b.Kubectl("", "get", "events", "-A", "--sort-by=.lastTimestamp")
	lines := strings.Split(out, "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	sb.WriteString(strings.Join(lines, "\n"))
	if selector != "" {
		out, _ = b.Kubectl("", "-n", namespace, "logs", "-l", selector, "--all-containers", "--tail=30", "--prefix")
		sb.WriteString(out)
	}
	return sb.String()
}

// Pods lists the pods in namespace matching selector.
func (b *Bench) Pods(ctx context.Context, namespace, selector string) ([]corev1.Pod, error) {
	l, err := b.Cluster.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}
