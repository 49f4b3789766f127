package e2e

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// TestControlPlane checks the harness itself: the control plane runs inside its own network
// namespace, answers the test's Go client, and a real process in a node namespace reaches it
// over the underlay with the written kubeconfig.
func TestControlPlane(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	nsl, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing namespaces: %v", err)
	}
	var names []string
	for _, n := range nsl.Items {
		names = append(names, n.Name)
	}
	for _, want := range []string{"default", "kube-system"} {
		if !slices.Contains(names, want) {
			t.Errorf("namespaces %v lack %s", names, want)
		}
	}

	// etcd and kube-apiserver live in the control-plane namespace, not in ours.
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	api := c.APIServer()
	apiNS, err := os.Readlink("/proc/" + itoa(api.PID()) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if apiNS == self {
		t.Fatalf("kube-apiserver (pid %d) runs in the test's own network namespace %s", api.PID(), self)
	}
	cpNS, err := c.ControlPlane.Run("readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(cpNS) != apiNS {
		t.Fatalf("kube-apiserver in %s, control-plane namespace is %s", apiNS, cpNS)
	}

	// A real process in a node namespace, with only the kubeconfig file.
	node := c.AddNode(t, "node-a")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=list-namespaces", "HELPER_KUBECONFIG="+c.Kubeconfig)
	p := node.Start(t, "list-namespaces", cmd)
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatal("helper process did not finish")
	}
	if _, err := p.Exited(); err != nil {
		t.Fatalf("helper in node namespace %s failed: %v\n%s", node.NS.Name, err, harness.Tail(p.LogPath, 20))
	}
	out, _ := os.ReadFile(p.LogPath)
	if !strings.Contains(string(out), "kube-system") {
		t.Fatalf("helper output lacks kube-system:\n%s", out)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
