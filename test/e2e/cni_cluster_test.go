package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// cniNet is the svcproxy-cni network of one node: a conflist naming that node's daemon socket,
// driven by the real cnitool run inside the node namespace, as a container runtime on that
// node would.
type cniNet struct {
	node    *harness.Node
	bin     string // CNI_PATH: svcproxy-cni and cnitool
	confDir string // NETCONFPATH
	netName string // unique per node and test, so cnitool's cache entries never collide
	socket  string
}

func newCNINet(t *testing.T, node *harness.Node, bin, socket string) *cniNet {
	t.Helper()
	n := &cniNet{node: node, bin: bin, confDir: t.TempDir(), netName: harness.RandomName("svcp-e2e-"), socket: socket}
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q,
 "plugins": [{"type": "svcproxy-cni", "apiSocket": %q, "capabilities": {"labels": true}}]}`, n.netName, socket)
	if err := os.WriteFile(filepath.Join(n.confDir, "10-svcproxy.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", n.netName+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
	})
	return n
}

// cnitool runs `cnitool CMD NET <pod netns>` inside the node namespace with the pod's identity
// in CNI_ARGS and its labels as capability args; it returns stdout and stderr.
func (n *cniNet) cnitool(ctx context.Context, cmd string, pod *harness.NetNS, namespace, name string, labels map[string]string) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	capArgs, err := json.Marshal(map[string]any{"labels": labels})
	if err != nil {
		return "", "", err
	}
	c := exec.CommandContext(ctx, filepath.Join(n.bin, "cnitool"), cmd, n.netName, pod.Path())
	c.Env = append(os.Environ(), "CNI_PATH="+n.bin, "NETCONFPATH="+n.confDir,
		"CNI_ARGS=K8S_POD_NAMESPACE="+namespace+";K8S_POD_NAME="+name, "CAP_ARGS="+string(capArgs))
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err = n.node.NS.Do(c.Run) // forked from a thread inside the node namespace
	if err != nil {
		err = fmt.Errorf("cnitool %s %s %s in node %s: %w; stderr: %s", cmd, n.netName, pod.Path(), n.node.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), stderr.String(), err
}

// plugin runs svcproxy-cni directly in the node namespace, as a runtime does, for command on
// pod (nil for STATUS) with attachment debug-<pod netns>/eth0. It returns nil on success, or
// the CNI error the plugin printed.
func (n *cniNet) plugin(ctx context.Context, command string, pod *harness.NetNS, prevResult string) (*types.Error, error) {
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "svcproxy-cni", "apiSocket": %q`, n.netName, n.socket)
	if prevResult != "" {
		conf += `, "prevResult": ` + prevResult
	}
	conf += "}"
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, filepath.Join(n.bin, "svcproxy-cni"))
	c.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_PATH="+n.bin)
	if pod != nil {
		c.Env = append(c.Env, "CNI_CONTAINERID=debug-"+pod.Name, "CNI_NETNS="+pod.Path(), "CNI_IFNAME=eth0")
	}
	c.Stdin = strings.NewReader(conf)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := n.node.NS.Do(c.Run)
	if err == nil {
		return nil, nil
	}
	te := &types.Error{}
	if jerr := json.Unmarshal(stdout.Bytes(), te); jerr != nil || te.Code == 0 {
		return nil, fmt.Errorf("svcproxy-cni %s in node %s: %w, and no CNI error on stdout: %q (stderr %q)", command, n.node.Name, err, stdout.String(), stderr.String())
	}
	return te, nil
}

// notReadyYet tells whether a failed ADD is the daemon's "pod network not ready / try again
// later" answer (CNI code 50 or 11), which a runtime retries, rather than a real failure.
func notReadyYet(stderr string) bool {
	s := strings.ToLower(stderr)
	return strings.Contains(s, "not ready") || strings.Contains(s, "try again later") || strings.Contains(s, "not known yet")
}

// e2ePod is a pod made the way kubelet + svcproxy-cni make one: a Pod object bound to a node,
// a network namespace, and `cnitool add` on that node.
type e2ePod struct {
	name string
	node *harness.Node
	ns   *harness.NetNS
	ip   netip.Addr
	// refusals are the "not ready yet" answers ADD got before it succeeded.
	refusals []string
}

// addPod creates the Pod object (unless it exists) and its namespace, then runs ADD on the node until the daemon
// stops answering "not ready yet" (at most 60 s); any other failure fails the test.
func addPod(t *testing.T, ctx context.Context, c *harness.Cluster, n *cniNet, namespace, name string, labels map[string]string) *e2ePod {
	t.Helper()
	if _, err := c.Client.CoreV1().Pods(namespace).Create(ctx, newPod(namespace, name, n.node.Name, labels), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	p := &e2ePod{name: name, node: n.node, ns: harness.NewNetNS(t, "svcp-p-")}
	deadline := time.Now().Add(60 * time.Second)
	var out string
	for {
		stdout, stderr, err := n.cnitool(ctx, "add", p.ns, namespace, name, labels)
		if err == nil {
			out = stdout
			break
		}
		if !notReadyYet(stderr) {
			t.Fatalf("ADD of pod %s/%s: %v", namespace, name, err)
		}
		p.refusals = append(p.refusals, strings.TrimSpace(stderr))
		if time.Now().After(deadline) {
			t.Fatalf("ADD of pod %s/%s still refused after 60 s: %v", namespace, name, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	res := &current.Result{}
	if err := json.Unmarshal([]byte(out), res); err != nil {
		t.Fatalf("decoding the ADD result of %s/%s %q: %v", namespace, name, out, err)
	}
	if len(res.IPs) != 1 {
		t.Fatalf("ADD of %s/%s gave %d addresses, want 1 (IPv4 only): %s", namespace, name, len(res.IPs), out)
	}
	ip, ok := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if !ok {
		t.Fatalf("ADD of %s/%s: bad address %v", namespace, name, res.IPs[0].Address)
	}
	p.ip = ip.Unmap()
	// The address is really on the pod's eth0.
	if err := p.ns.WithNetlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := h.AddrList(eth, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.Equal(res.IPs[0].Address.IP) {
				return nil
			}
		}
		return fmt.Errorf("eth0 has %v, not %s", addrs, p.ip)
	}); err != nil {
		t.Fatalf("pod %s/%s: %v", namespace, name, err)
	}
	return p
}

// waitHealthy waits (at most 60 s) until the daemon d on node n answers 200 on /healthz, and
// fails the test at once if it exits.
func waitHealthy(t *testing.T, ctx context.Context, d *harness.Process, n *harness.Node) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, n.Name+" healthz", func() error {
		if done, err := d.Exited(); done {
			t.Fatalf("svcproxy on %s exited: %v\n%s", n.Name, err, harness.Tail(d.LogPath, 30))
		}
		code, body, err := health(ctx, n)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d: %v", code, body)
		}
		return nil
	})
}

// servePod answers every TCP connection on port inside the pod with "NAME PEER-IP".
func servePod(t *testing.T, p *e2ePod, port int) {
	t.Helper()
	var ln net.Listener
	if err := p.ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	}); err != nil {
		t.Fatalf("listening in pod %s: %v", p.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			peer, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			fmt.Fprintf(conn, "%s %s\n", p.name, peer)
			conn.Close()
		}
	}()
}

// dialer is where probes start: a node or a pod namespace.
type dialer struct {
	name string
	ns   *harness.NetNS
}

// ask makes one connection from d to target and returns the answering pod and the peer address
// it saw. timeout bounds the whole exchange.
func (d dialer) ask(ctx context.Context, target string, timeout time.Duration) (pod, peer string, err error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := d.ns.DialContext(dctx, "tcp", target)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", "", err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", "", fmt.Errorf("answer %q is not \"POD PEER\"", line)
	}
	return f[0], f[1], nil
}

// spread makes n connections from d to target, each with a 2 s timeout, and counts the
// answering pods; peers collects the source addresses the pods saw. The first failure ends it.
func (d dialer) spread(ctx context.Context, target string, n int) (map[string]int, map[string]bool, error) {
	got, peers := map[string]int{}, map[string]bool{}
	for i := 0; i < n; i++ {
		pod, peer, err := d.ask(ctx, target, 2*time.Second)
		if err != nil {
			return got, peers, fmt.Errorf("from %s to %s, connection %d: %w", d.name, target, i+1, err)
		}
		got[pod]++
		peers[peer] = true
	}
	return got, peers, nil
}

// health reads /healthz of a node's daemon (from inside its namespace).
func health(ctx context.Context, n *harness.Node) (int, map[string]any, error) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.NS.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.IP.String()+":10256/healthz", nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	body := map[string]any{}
	if err := json.Unmarshal(b, &body); err != nil {
		return resp.StatusCode, nil, fmt.Errorf("/healthz body %q: %w", b, err)
	}
	return resp.StatusCode, body, nil
}

// daemonStatus runs `svcproxy status --json` in the node namespace against its daemon.
func daemonStatus(bin string, n *harness.Node, socket string) (*api.Status, error) {
	out, err := n.NS.Run(bin, "status", "--json", "--api-socket", socket)
	if err != nil {
		return nil, err
	}
	s := &api.Status{}
	if err := json.Unmarshal([]byte(out), s); err != nil {
		return nil, fmt.Errorf("svcproxy status --json on %s: %w\n%s", n.Name, err, out)
	}
	return s, nil
}

// iptablesRules returns the node's rules in both iptables flavours.
func iptablesRules(n *harness.Node) (string, error) {
	var all strings.Builder
	for _, cmd := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := n.NS.Run(cmd)
		if err != nil {
			return "", err
		}
		all.WriteString(out)
	}
	return all.String(), nil
}

// sliceFor lists pods as endpoints of svc (ready, with nodeName and a Pod targetRef), as the
// EndpointSlice controller would.
func sliceFor(namespace, name, svc string, pods ...*e2ePod) *discoveryv1.EndpointSlice {
	var eps []testEP
	for _, p := range pods {
		eps = append(eps, testEP{p.ip.String(), p.node.Name, true, false})
	}
	s := newSlice(namespace, name, svc, time.Now().UTC().Format(time.RFC3339), eps...)
	for i, p := range pods {
		s.Endpoints[i].TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: namespace, Name: p.name}
	}
	return s
}

// TestClusterPodsThroughCNI is the cluster e2e with pods wired by svcproxy-cni: two nodes run
// the real svcproxy (iptables) with no podCIDR in their config, so each takes its pod range
// from its Node's spec.podCIDRs; the real cnitool and svcproxy-cni give pods addresses from
// those ranges (a node whose Node object has no range yet is refused with "not ready"), and
// EndpointSlices listing those pods make a VIP that reaches pods on both nodes from both nodes
// and from a pod. `svcproxy status --json` shows the Kubernetes source, the services and the
// pod range's usage; a deleted Service stops answering and leaves no rule; with kube-apiserver
// stopped the data plane keeps serving while /healthz reports the view stale, and a slice
// change made after it returns is applied.
func TestClusterPodsThroughCNI(t *testing.T) {
	harness.RequireRoot(t)
	bin := harness.SvcproxyBinary(t)
	cniBin := harness.CNIBinaries(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	specs := []nodeSpec{{name: "node1", podCIDR: "10.244.1.0/24"}, {name: "node2", podCIDR: "10.244.2.0/24"}}
	n1, n2 := c.AddNode(t, "node1"), c.AddNode(t, "node2")
	nodes := []*harness.Node{n1, n2}
	// node1 is registered (by its kubelet, with its range from the node IPAM controller)
	// before its daemon starts; node2 only after, so its daemon first has no pod range.
	if _, err := c.RegisterNode(ctx, "node1", n1.IP, "", specs[0].podCIDR); err != nil {
		t.Fatal(err)
	}
	createNamespace(t, ctx, c.Client, "e2e")
	web, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "web", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "gone", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	var daemons []*harness.Process
	var sockets []string
	for i, n := range nodes {
		daemons = append(daemons, startDaemon(t, bin, c, n, nodeSpec{name: specs[i].name}, "iptables")) // no podCIDR in the file
		sockets = append(sockets, filepath.Join(c.Dir, n.Name, "svcproxy.sock"))
	}
	for i, n := range nodes {
		waitHealthy(t, ctx, daemons[i], n)
	}

	// Pods through svcproxy-cni. node2's daemon knows no pod range until its Node exists, so
	// its first ADD must be refused as "not ready"; then the Node is registered and the retry
	// succeeds.
	nets := []*cniNet{newCNINet(t, n1, cniBin, sockets[0]), newCNINet(t, n2, cniBin, sockets[1])}
	web1 := addPod(t, ctx, c, nets[0], "e2e", "web-1", map[string]string{"app": "web"})
	client := addPod(t, ctx, c, nets[0], "e2e", "client", map[string]string{"app": "client"})
	if _, err := c.Client.CoreV1().Pods("e2e").Create(ctx, newPod("e2e", "web-2", "node2", map[string]string{"app": "web"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	early := harness.NewNetNS(t, "svcp-p-")
	if _, stderr, err := nets[1].cnitool(ctx, "add", early, "e2e", "web-2", map[string]string{"app": "web"}); err == nil || !notReadyYet(stderr) {
		t.Fatalf("ADD on node2 before its Node has spec.podCIDRs: want a \"not ready\" refusal, got err=%v stderr=%q", err, stderr)
	} else {
		t.Logf("node2 before its Node exists: ADD refused: %s", strings.TrimSpace(stderr))
	}
	if _, err := c.RegisterNode(ctx, "node2", n2.IP, "", specs[1].podCIDR); err != nil {
		t.Fatal(err)
	}
	web2 := addPod(t, ctx, c, nets[1], "e2e", "web-2", map[string]string{"app": "web"})
	for _, p := range []*e2ePod{web1, client, web2} {
		want := netip.MustParsePrefix(specs[slices.Index(nodes, p.node)].podCIDR)
		if !want.Contains(p.ip) {
			t.Fatalf("pod %s on %s got %s, outside its Node's range %s", p.name, p.node.Name, p.ip, want)
		}
		t.Logf("pod %s on %s: %s (refused %d times first)", p.name, p.node.Name, p.ip, len(p.refusals))
	}
	if web1.ip == client.ip {
		t.Fatalf("two pods on node1 share %s", web1.ip)
	}
	// host-gw: each node routes the other's pod range (from its Node) via its InternalIP.
	for i, n := range nodes {
		other := nodes[1-i]
		dst := netip.MustParsePrefix(specs[1-i].podCIDR)
		harness.Eventually(t, 30*time.Second, n.Name+" route to "+dst.String()+" via "+other.IP.String(), func() error {
			return n.NS.WithNetlink(func(h *netlink.Handle) error {
				routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}}, netlink.RT_FILTER_DST)
				if err != nil {
					return err
				}
				for _, r := range routes {
					if r.Gw.Equal(other.IP.AsSlice()) {
						return nil
					}
				}
				return fmt.Errorf("routes to %s: %v", dst, routes)
			})
		})
	}
	servePod(t, web1, 8080)
	servePod(t, web2, 8080)
	for _, svc := range []string{"web", "gone"} {
		if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Create(ctx, sliceFor("e2e", svc+"-abcde", svc, web1, web2), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The VIP reaches the pods of both nodes from both nodes and from a pod; pod-to-pod
	// traffic keeps the client pod's address.
	vip := net.JoinHostPort(web.Spec.ClusterIP, "80")
	goneVIP := net.JoinHostPort(gone.Spec.ClusterIP, "80")
	from := []dialer{{"node1", n1.NS}, {"node2", n2.NS}, {"pod client on node1", client.ns}}
	const tries = 40
	for _, target := range []string{vip, goneVIP} {
		for _, d := range from {
			harness.Eventually(t, 60*time.Second, target+" from "+d.name+" reaching both nodes' pods", func() error {
				got, peers, err := d.spread(ctx, target, tries)
				if err != nil {
					return err
				}
				if got["web-1"] == 0 || got["web-2"] == 0 || got["web-1"]+got["web-2"] != tries {
					return fmt.Errorf("answers %v", got)
				}
				if d.ns == client.ns && (len(peers) != 1 || !peers[client.ip.String()]) {
					return fmt.Errorf("the pods saw the client pod as %v, want its own address %s (no masquerade inside the cluster)", keys(peers), client.ip)
				}
				return nil
			})
		}
	}

	// svcproxy status --json in cluster mode.
	usedOn := map[string]uint64{"node1": 2, "node2": 1}
	for i, n := range nodes {
		st, err := daemonStatus(bin, n, sockets[i])
		if err != nil {
			t.Fatal(err)
		}
		if st.Source != "kubernetes" || st.NodeName != n.Name || st.Mode != "iptables" || !st.Healthy {
			t.Errorf("status on %s: source %q node %q mode %q healthy %v (%s); want kubernetes, %s, iptables, healthy",
				n.Name, st.Source, st.NodeName, st.Mode, st.Healthy, st.HealthReason, n.Name)
		}
		for _, svc := range []*corev1.Service{web, gone} {
			var found *api.Service
			for j := range st.Services {
				if st.Services[j].Namespace == "e2e" && st.Services[j].Name == svc.Name {
					found = &st.Services[j]
				}
			}
			if found == nil {
				t.Errorf("status on %s lacks service e2e/%s: %+v", n.Name, svc.Name, st.Services)
				continue
			}
			if !slices.Equal(found.ClusterIPs, []string{svc.Spec.ClusterIP}) || len(found.Ports) != 1 || found.Ports[0].Port != 80 {
				t.Errorf("status on %s: e2e/%s is %+v, want clusterIP %s port 80", n.Name, svc.Name, found, svc.Spec.ClusterIP)
				continue
			}
			var eps []string
			for _, e := range found.Ports[0].Endpoints {
				if e.State != "active" {
					t.Errorf("status on %s: e2e/%s endpoint %s is %q, want active", n.Name, svc.Name, e.Address, e.State)
				}
				eps = append(eps, e.Address+"@"+e.Node)
			}
			sort.Strings(eps)
			want := []string{web1.ip.String() + ":8080@node1", web2.ip.String() + ":8080@node2"}
			if !slices.Equal(eps, want) {
				t.Errorf("status on %s: e2e/%s endpoints %v, want %v", n.Name, svc.Name, eps, want)
			}
		}
		var pod *api.Range
		for j := range st.IPAM {
			if st.IPAM[j].Kind == "pod" {
				pod = &st.IPAM[j]
			}
		}
		switch {
		case pod == nil:
			t.Errorf("status on %s has no pod IPAM range: %+v", n.Name, st.IPAM)
		case pod.Range != specs[i].podCIDR || pod.Used != usedOn[n.Name] || pod.Size == 0:
			t.Errorf("status on %s: pod range %+v, want range %s (from the Node) with %d used", n.Name, *pod, specs[i].podCIDR, usedOn[n.Name])
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// A deleted Service stops answering and its rules go. Its EndpointSlice stays (no
	// garbage collector runs here): a slice without its Service must not keep the VIP alive.
	for _, n := range nodes {
		rules, err := iptablesRules(n)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rules, gone.Spec.ClusterIP+"/32") {
			t.Fatalf("before the deletion, %s's rules do not mention %s:\n%s", n.Name, gone.Spec.ClusterIP, rules)
		}
	}
	if err := c.Client.CoreV1().Services("e2e").Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for _, n := range nodes {
		harness.Eventually(t, 20*time.Second, "rules of e2e/gone leaving "+n.Name, func() error {
			rules, err := iptablesRules(n)
			if err != nil {
				return err
			}
			for _, l := range strings.Split(rules, "\n") {
				if strings.Contains(l, gone.Spec.ClusterIP) || strings.Contains(l, "e2e/gone") {
					return fmt.Errorf("rule left: %s", l)
				}
			}
			return nil
		})
	}
	t.Logf("rules of the deleted service gone from both nodes %s after the deletion", time.Since(deleted).Round(time.Millisecond))
	// Nothing answers on its VIP any more: every attempt is refused or times out.
	var wg sync.WaitGroup
	served := make(chan string, 3*5)
	for _, d := range from {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				if pod, _, err := d.ask(ctx, goneVIP, 500*time.Millisecond); err == nil {
					served <- fmt.Sprintf("%s from %s answered by %s", goneVIP, d.name, pod)
				}
			}
		}()
	}
	wg.Wait()
	close(served)
	for s := range served {
		t.Errorf("deleted service still served: %s", s)
	}
	if t.Failed() {
		t.FailNow()
	}

	// API outage: kube-apiserver stops. The data plane keeps serving (every probe answered)
	// until both daemons report the view stale on /healthz, which still answers 200.
	c.KillAPIServer()
	stopped := time.Now()
	t.Logf("kube-apiserver killed")
	stale := map[string]bool{}
	probes := 0
	for len(stale) < len(nodes) || time.Since(stopped) < 5*time.Second {
		if time.Since(stopped) > 60*time.Second {
			t.Fatalf("no apiStale on /healthz of %v 60 s after kube-apiserver stopped (%d probes served)", missing(nodes, stale), probes)
		}
		for _, d := range from {
			pod, _, err := d.ask(ctx, vip, 2*time.Second)
			if err != nil {
				t.Fatalf("%s after kube-apiserver stopped (%d probes served before): %v", time.Since(stopped).Round(time.Millisecond), probes, err)
			}
			if pod != "web-1" && pod != "web-2" {
				t.Fatalf("answered by %q", pod)
			}
			probes++
		}
		for _, n := range nodes {
			if stale[n.Name] {
				continue
			}
			code, body, err := health(ctx, n)
			if err != nil {
				t.Fatalf("/healthz of %s during the outage: %v", n.Name, err)
			}
			if code != http.StatusOK {
				t.Fatalf("/healthz of %s during the outage: %d %v, want 200", n.Name, code, body)
			}
			if body["apiStale"] == true {
				stale[n.Name] = true
				t.Logf("%s: /healthz 200 with apiStale %s after the stop: %v", n.Name, time.Since(stopped).Round(time.Millisecond), body)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("outage: %d probes to %s from nodes and pod, all served, over %s", probes, vip, time.Since(stopped).Round(time.Millisecond))
	st, err := daemonStatus(bin, n1, sockets[0])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.HealthReason, "unreachable") || len(st.Services) == 0 {
		t.Errorf("status on node1 during the outage: healthReason %q, %d services; want it to say the API is unreachable, and the last view kept", st.HealthReason, len(st.Services))
	}

	// kube-apiserver back; a slice change made now (web-2 leaves) is applied.
	c.StartAPIServer()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	cur, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Get(ctx, "web-abcde", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd := sliceFor("e2e", "web-abcde", "web", web1)
	upd.ResourceVersion = cur.ResourceVersion
	if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range from {
		// The source holds its informers' list/watch calls during an outage and releases them
		// when its /readyz probe (every 5 s) sees the API again, so client-go's backoff never
		// grows: the change arrives in about 2 s (1.8 to 2.6 s in the runs so far). 20 s leaves
		// room for one probe interval and one relist wait of client-go (up to 3.2 s).
		harness.Eventually(t, 20*time.Second, "only web-1 answering "+vip+" from "+d.name+" after the API came back", func() error {
			got, _, err := d.spread(ctx, vip, 20)
			if err != nil {
				return err
			}
			if got["web-1"] != 20 {
				return fmt.Errorf("answers %v", got)
			}
			return nil
		})
		t.Logf("slice change after the outage seen from %s %s after the update", d.name, time.Since(back).Round(time.Millisecond))
	}
	for _, n := range nodes {
		harness.Eventually(t, 30*time.Second, n.Name+" /healthz no longer stale", func() error {
			code, body, err := health(ctx, n)
			if err != nil {
				return err
			}
			if code != http.StatusOK || body["apiStale"] != nil {
				return fmt.Errorf("%d %v", code, body)
			}
			return nil
		})
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func missing(nodes []*harness.Node, have map[string]bool) []string {
	var out []string
	for _, n := range nodes {
		if !have[n.Name] {
			out = append(out, n.Name)
		}
	}
	return out
}

// TestClusterCNIBeforePodRange runs the real svcproxy (no podCIDR in its config) on a node
// whose Node object does not exist yet, and drives svcproxy-cni against it the way a runtime
// does. Until the daemon knows the node's pod range every command must say "try again" in
// CNI terms, so that the runtime retries: STATUS and ADD "not available" (50) or "try again
// later" (11), CHECK "try again later" (11), DEL success or "try again later" (11); and an ADD
// that was refused leaves nothing in the pod. Once the Node is registered with spec.podCIDRs,
// STATUS is ok, ADD gives an address in that range and DEL frees it.
func TestClusterCNIBeforePodRange(t *testing.T) {
	harness.RequireRoot(t)
	bin := harness.SvcproxyBinary(t)
	cniBin := harness.CNIBinaries(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n := c.AddNode(t, "node1")
	d := startDaemon(t, bin, c, n, nodeSpec{name: "node1"}, "iptables")
	socket := filepath.Join(c.Dir, n.Name, "svcproxy.sock")
	waitHealthy(t, ctx, d, n)
	cni := newCNINet(t, n, cniBin, socket)
	pod := harness.NewNetNS(t, "svcp-p-")
	const prev = `{"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.9/24"}]}`

	for _, step := range []struct {
		command    string
		pod        *harness.NetNS
		prevResult string
		okCodes    []uint
		mayPass    bool
	}{
		{"STATUS", nil, "", []uint{50, 11}, false},
		{"ADD", pod, "", []uint{50, 11}, false},
		{"CHECK", pod, prev, []uint{11}, false},
		{"DEL", pod, "", []uint{11}, true},
	} {
		te, err := cni.plugin(ctx, step.command, step.pod, step.prevResult)
		switch {
		case err != nil:
			t.Errorf("%s before the pod range is known: %v", step.command, err)
		case te == nil && !step.mayPass:
			t.Errorf("%s before the pod range is known succeeded; want CNI code %v", step.command, step.okCodes)
		case te != nil && !slices.Contains(step.okCodes, te.Code):
			t.Errorf("%s before the pod range is known: CNI code %d (%s); want %v (the runtime must retry later)", step.command, te.Code, te.Msg, step.okCodes)
		case te != nil:
			t.Logf("%s before the pod range is known: code %d: %s", step.command, te.Code, te.Msg)
		default:
			t.Logf("%s before the pod range is known: ok", step.command)
		}
	}
	if l := cnitestLink(t, pod, "eth0"); l {
		t.Errorf("a refused ADD left eth0 in the pod")
	}

	if _, err := c.RegisterNode(ctx, "node1", n.IP, "", "10.244.1.0/24"); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "STATUS ok once the Node has spec.podCIDRs", func() error {
		te, err := cni.plugin(ctx, "STATUS", nil, "")
		if err != nil {
			return err
		}
		if te != nil {
			return fmt.Errorf("code %d: %s", te.Code, te.Msg)
		}
		return nil
	})
	p := addPod(t, ctx, c, cni, "default", "late", map[string]string{"app": "late"})
	if !netip.MustParsePrefix("10.244.1.0/24").Contains(p.ip) {
		t.Fatalf("pod got %s, outside the Node's range 10.244.1.0/24", p.ip)
	}
	if _, _, err := cni.cnitool(ctx, "del", p.ns, "default", "late", nil); err != nil {
		t.Fatal(err)
	}
	st, err := daemonStatus(bin, n, socket)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.IPAM {
		if r.Kind == "pod" && (r.Range != "10.244.1.0/24" || r.Used != 0) {
			t.Errorf("after DEL the pod range is %+v, want 10.244.1.0/24 with none used", r)
		}
	}
}

// cnitestLink tells whether the link exists in the namespace.
func cnitestLink(t *testing.T, ns *harness.NetNS, name string) bool {
	t.Helper()
	found := false
	if err := ns.WithNetlink(func(h *netlink.Handle) error {
		_, err := h.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			found = true
		case errors.As(err, &nf):
		default:
			return err
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return found
}
