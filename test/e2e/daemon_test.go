package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// nodeSpec is one node of a daemon test: its Kubernetes name, pod range and an endpoint
// address inside that range.
type nodeSpec struct {
	name     string
	podCIDR  string
	endpoint string
	// extraConfig is appended to the ProxyConfig as is (top-level YAML).
	extraConfig string
}

// startDaemon writes a settings-only ProxyConfig for node and runs the real svcproxy in its
// namespace with the admin kubeconfig, in cluster mode. An empty spec.podCIDR leaves podCIDR
// out of the file: the daemon then takes this node's pod range from its Node object. Everything it keeps on disk is the
// test's: state dir, API socket, and a private bpffs for ebpf.pinPath (the iptables backend
// removes what an ebpf run left under that path).
func startDaemon(t *testing.T, bin string, c *harness.Cluster, node *harness.Node, spec nodeSpec, mode string) *harness.Process {
	t.Helper()
	dir := filepath.Join(c.Dir, node.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	podCIDRLine := ""
	if spec.podCIDR != "" {
		podCIDRLine = "podCIDR: " + spec.podCIDR + "\n"
	}
	cfg := fmt.Sprintf(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
mode: %s
clusterCIDR: %s
%sserviceCIDR: %s
bridge: svc0
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 0.0.0.0:10256
stateDir: %s
apiSocket: %s
minSyncPeriod: 100ms
ebpf:
  pinPath: %s
%s`, mode, harness.ClusterCIDR, podCIDRLine, harness.ServiceCIDR, filepath.Join(dir, "state"), filepath.Join(dir, "svcproxy.sock"),
		filepath.Join(harness.NewBPFFS(t), "svcproxy"), spec.extraConfig)
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--kubeconfig", c.Kubeconfig, "--config", cfgPath, "--node-name", node.Name)
	p := node.Start(t, "svcproxy", cmd)
	// Remove what the daemon programmed in the node namespace before the namespace goes (the
	// namespace's deletion would too; this exercises the command).
	t.Cleanup(func() {
		_ = p.Stop()
		if out, err := node.NS.Run(bin, "cleanup", "--config", cfgPath); err != nil {
			t.Logf("svcproxy cleanup in %s: %v\n%s", node.Name, err, out)
		}
	})
	return p
}

// serveName listens on addr:port inside the node namespace (addr is added to its loopback)
// and answers every connection with the node's name.
func serveName(t *testing.T, node *harness.Node, addr string, port int) {
	t.Helper()
	if err := node.NS.WithNetlink(func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(addr + "/32")
		if err != nil {
			return err
		}
		return h.AddrAdd(lo, a)
	}); err != nil {
		t.Fatalf("adding %s in %s: %v", addr, node.Name, err)
	}
	var ln net.Listener
	if err := node.NS.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(addr, fmt.Sprint(port)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(conn, node.Name)
			conn.Close()
		}
	}()
}

// askName connects from node's namespace to target and returns the name the server sent.
func askName(ctx context.Context, node *harness.Node, target string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := node.NS.DialContext(dctx, "tcp", target)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// answers makes n bounded connections and counts who answered.
func answers(ctx context.Context, node *harness.Node, target string, n int) (map[string]int, error) {
	got := map[string]int{}
	for i := 0; i < n; i++ {
		name, err := askName(ctx, node, target)
		if err != nil {
			return got, err
		}
		got[name]++
	}
	return got, nil
}

// TestDaemonClusterMode runs the real svcproxy in cluster mode on two node namespaces joined
// by the underlay. A Service and its EndpointSlice created through the API server become a VIP
// that balances across both nodes' endpoints (the remote one through the host-gw route to the
// other node's pod range), a NodePort service answers on a node's address from the other node,
// and an endpoint removed from the slice stops getting connections.
func TestDaemonClusterMode(t *testing.T) {
	harness.RequireRoot(t)
	bin := harness.SvcproxyBinary(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	specs := []nodeSpec{
		{name: "node1", podCIDR: "10.244.1.0/24", endpoint: "10.244.1.10"},
		{name: "node2", podCIDR: "10.244.2.0/24", endpoint: "10.244.2.10"},
	}
	var nodes []*harness.Node
	for _, s := range specs {
		n := c.AddNode(t, s.name)
		if _, err := c.RegisterNode(ctx, s.name, n.IP, "", s.podCIDR); err != nil {
			t.Fatal(err)
		}
		serveName(t, n, s.endpoint, 8080)
		nodes = append(nodes, n)
	}
	createNamespace(t, ctx, c.Client, "e2e")
	svc, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "web", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Create(ctx, newSlice("e2e", "web-a", "web", "",
		testEP{specs[0].endpoint, "node1", true, false}, testEP{specs[1].endpoint, "node2", true, false}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	np, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "np", corev1.ServiceTypeNodePort, 81), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Create(ctx, newSlice("e2e", "np-a", "np", "",
		testEP{specs[0].endpoint, "node1", true, false}, testEP{specs[1].endpoint, "node2", true, false}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var daemons []*harness.Process
	for i, n := range nodes {
		daemons = append(daemons, startDaemon(t, bin, c, n, specs[i], "iptables"))
	}
	// Both daemons healthy (their /healthz, inside their namespaces).
	for i, n := range nodes {
		hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.NS.DialContext}}
		harness.Eventually(t, 60*time.Second, n.Name+" healthz", func() error {
			if done, err := daemons[i].Exited(); done {
				t.Fatalf("svcproxy on %s exited: %v\n%s", n.Name, err, harness.Tail(daemons[i].LogPath, 30))
			}
			resp, err := hc.Get("http://" + n.IP.String() + ":10256/healthz")
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", resp.Status, body)
			}
			return nil
		})
	}

	vip := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	const tries = 40
	harness.Eventually(t, 60*time.Second, "VIP "+vip+" from node1 reaching both nodes' endpoints", func() error {
		got, err := answers(ctx, nodes[0], vip, tries)
		if err != nil {
			return err
		}
		if got["node1"] == 0 || got["node2"] == 0 || got["node1"]+got["node2"] != tries {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})
	harness.Eventually(t, 60*time.Second, "VIP "+vip+" from node2", func() error {
		got, err := answers(ctx, nodes[1], vip, tries)
		if err != nil {
			return err
		}
		if got["node1"] == 0 || got["node2"] == 0 {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})

	// NodePort on node1's underlay address, from node2: node1 forwards to both endpoints.
	nodePort := net.JoinHostPort(nodes[0].IP.String(), fmt.Sprint(np.Spec.Ports[0].NodePort))
	harness.Eventually(t, 60*time.Second, "NodePort "+nodePort+" from node2", func() error {
		got, err := answers(ctx, nodes[1], nodePort, tries)
		if err != nil {
			return err
		}
		if got["node1"] == 0 || got["node2"] == 0 {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})

	// node2's endpoint leaves the slice: every connection goes to node1.
	cur, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Get(ctx, "web-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := newSlice("e2e", "web-a", "web", time.Now().UTC().Format(time.RFC3339), testEP{specs[0].endpoint, "node1", true, false})
	upd.ResourceVersion = cur.ResourceVersion
	if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "only node1 answering on "+vip, func() error {
		got, err := answers(ctx, nodes[1], vip, tries)
		if err != nil {
			return err
		}
		if got["node1"] != tries {
			return fmt.Errorf("answers %v", got)
		}
		return nil
	})
}
