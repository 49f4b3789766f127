package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// TestClusterPodGC: in cluster mode, the IPs of a pod that the API no longer knows (its DEL
// never came: a node crash, a runtime bug) are freed by the daemon's GC once the allocation is
// older than ipam.podGCGracePeriod; the IPs of live pods stay.
func TestClusterPodGC(t *testing.T) {
	harness.RequireRoot(t)
	bin := harness.SvcproxyBinary(t)
	cniBin := harness.CNIBinaries(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := c.AddNode(t, "node1")
	if _, err := c.RegisterNode(ctx, "node1", n.IP, "", "10.244.1.0/24"); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, bin, c, n, nodeSpec{name: "node1", extraConfig: "ipam: {podGCGracePeriod: 2s}\n"}, "iptables")
	socket := filepath.Join(c.Dir, n.Name, "svcproxy.sock")
	waitHealthy(t, ctx, d, n)
	cni := newCNINet(t, n, cniBin, socket)
	keep := addPod(t, ctx, c, cni, "default", "keep", map[string]string{"app": "x"})
	gone := addPod(t, ctx, c, cni, "default", "gone", map[string]string{"app": "x"})

	podsOf := func() (map[string]string, error) {
		st, err := daemonStatus(bin, n, socket)
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, p := range st.Pods {
			if len(p.IPs) > 0 {
				out[p.Namespace+"/"+p.Name] = p.IPs[0]
			}
		}
		return out, nil
	}
	pods, err := podsOf()
	if err != nil {
		t.Fatal(err)
	}
	if pods["default/keep"] != keep.ip.String() || pods["default/gone"] != gone.ip.String() {
		t.Fatalf("status pods = %v, want keep=%s gone=%s", pods, keep.ip, gone.ip)
	}
	// The Pod object goes; no DEL reaches the plugin.
	if err := c.Client.CoreV1().Pods("default").Delete(ctx, "gone", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	harness.Eventually(t, 60*time.Second, "GC frees the deleted pod's IP", func() error {
		pods, err := podsOf()
		if err != nil {
			return err
		}
		if _, ok := pods["default/gone"]; ok {
			return fmt.Errorf("still allocated: %v", pods)
		}
		return nil
	})
	t.Logf("IP of the deleted pod freed %v after the Pod was deleted", time.Since(start).Round(10*time.Millisecond))
	pods, err = podsOf()
	if err != nil {
		t.Fatal(err)
	}
	if pods["default/keep"] != keep.ip.String() {
		t.Fatalf("GC must keep the live pod's IP: %v", pods)
	}
}
