package harness

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Addresses of the test cluster. They exist only inside the namespaces the harness creates.
const (
	// UnderlayPrefix is the node underlay: the control-plane namespace holds the bridge with
	// ControlPlaneIP, every node namespace joins it with the next free address.
	UnderlayPrefix = "172.31.0.0/24"
	ControlPlaneIP = "172.31.0.1"
	// APIServerPort is kube-apiserver's secure port on ControlPlaneIP.
	APIServerPort = 6443
	// ServiceCIDR is kube-apiserver's --service-cluster-ip-range.
	ServiceCIDR = "10.96.0.0/16"
	// ClusterCIDR is where tests take pod ranges from (10.244.<n>.0/24 per node).
	ClusterCIDR = "10.244.0.0/16"
	// UnderlayBridge is the bridge's name inside the control-plane namespace.
	UnderlayBridge = "underlay0"
)

// Options tune StartCluster; the zero value is what most tests want.
type Options struct {
	// KubeBinDir holds kube-apiserver; default: KubeBinDir(t).
	KubeBinDir string
	// ExtraAPIServerArgs are appended to kube-apiserver's command line.
	ExtraAPIServerArgs []string
	// WithKubelets configures kube-apiserver for real kubelets and controllers (the
	// real-node bench): Node+RBAC authorization, the ServiceAccount admission plugin (pods
	// get tokens from kube-controller-manager's token controller), the lease endpoint
	// reconciler (the "kubernetes" Service gets ControlPlaneIP as its endpoint) and kubelet
	// connections by InternalIP.
	WithKubelets bool
	// Tokens are further static tokens, one "token,user,uid,\"group1,group2\"" line each
	// (for kubelets: user system:node:NAME in group system:nodes).
	Tokens []string
}

// Cluster is a control plane (etcd + kube-apiserver) running in a network namespace of its
// own, on an underlay bridge that node namespaces join. Nothing listens in the root
// namespace: etcd listens on 127.0.0.1 of the control-plane namespace, kube-apiserver on
// ControlPlaneIP:APIServerPort there. Go code in the test reaches it through Config / Client,
// whose dialer creates its sockets inside the control-plane namespace; processes in node
// namespaces reach it over the underlay with the kubeconfig at Kubeconfig.
type Cluster struct {
	Dir          string // logs, keys, kubeconfig, etcd data
	ControlPlane *NetNS
	Server       string // https://172.31.0.1:6443
	CAPEM        []byte
	AdminToken   string
	// Kubeconfig is an admin kubeconfig (token in group system:masters) usable from any node
	// namespace.
	Kubeconfig string
	// Config and Client are admin clients for the test's own Go code.
	Config *rest.Config
	Client kubernetes.Interface

	t            testing.TB
	binDir       string
	pki          *pki
	extraArgs    []string
	withKubelets bool

	mu        sync.Mutex
	apiserver *Process
	apiRuns   int
	nextHost  int
}

// RequireRoot skips the test when not running as root, unless env CI is set: then it fails.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (network namespaces), and CI is set: refusing to skip")
	}
	t.Skip("needs root (network namespaces); runs as root in CI")
}

// StartCluster starts etcd and kube-apiserver in a fresh control-plane namespace and waits
// until /readyz answers ok. Everything is stopped (by PID) and deleted on test cleanup.
func StartCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	RequireRoot(t)
	binDir := opts.KubeBinDir
	if binDir == "" {
		binDir = KubeBinDir(t)
	}
	dir := t.TempDir()
	cp := NewNetNS(t, "svcp-cp-")
	if err := cp.WithNetlink(func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: UnderlayBridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("adding bridge: %w", err)
		}
		addr, err := netlink.ParseAddr(ControlPlaneIP + "/24")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("adding %s: %w", addr, err)
		}
		return h.LinkSetUp(br)
	}); err != nil {
		t.Fatalf("harness: underlay bridge in %s: %v", cp.Name, err)
	}
	p, err := newPKI(dir, []net.IP{net.ParseIP(ControlPlaneIP), net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}, opts.Tokens)
	if err != nil {
		t.Fatalf("harness: generating keys: %v", err)
	}
	c := &Cluster{
		Dir:          dir,
		ControlPlane: cp,
		Server:       "https://" + net.JoinHostPort(ControlPlaneIP, strconv.Itoa(APIServerPort)),
		CAPEM:        p.CAPEM,
		AdminToken:   p.AdminToken,
		Kubeconfig:   filepath.Join(dir, "admin.kubeconfig"),
		t:            t,
		binDir:       binDir,
		pki:          p,
		extraArgs:    opts.ExtraAPIServerArgs,
		withKubelets: opts.WithKubelets,
		nextHost:     2,
	}
	if err := c.WriteKubeconfig(c.Kubeconfig, "admin", c.AdminToken); err != nil {
		t.Fatalf("harness: %v", err)
	}
	c.Config = c.RESTConfig(c.AdminToken)
	c.Client = kubernetes.NewForConfigOrDie(c.Config)

	etcdDir := filepath.Join(dir, "etcd")
	cp.Start(t, dir, "etcd", exec.Command("etcd",
		"--name", "e2e",
		"--data-dir", etcdDir,
		"--listen-client-urls", "http://127.0.0.1:2379",
		"--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380",
		"--log-level", "warn",
	))
	// One cleanup for whichever kube-apiserver runs last (tests restart it), registered after
	// etcd's so that it runs before etcd's. Cleanups the test registers later (clients,
	// sources) run before it: kube-apiserver then stops without open watches to drain.
	// kube-apiserver sometimes lingers after "apiserver is exiting" (storage statistics
	// goroutines); its state is thrown away, so it gets a short grace period.
	t.Cleanup(func() {
		if p := c.APIServer(); p != nil {
			p.cleanupWithin(t, 2*time.Second)
		}
	})
	start := time.Now()
	c.StartAPIServer()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatalf("harness: kube-apiserver not ready: %v\n%s", err, Tail(filepath.Join(dir, "kube-apiserver-1.log"), 30))
	}
	t.Logf("harness: control plane ready in %s (netns %s, %s)", time.Since(start).Round(time.Millisecond), cp.Name, c.Server)
	return c
}

// APIServerArgs returns kube-apiserver's command line (without the binary).
func (c *Cluster) APIServerArgs() []string {
	args := []string{
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=" + ControlPlaneIP,
		"--advertise-address=" + ControlPlaneIP,
		"--secure-port=" + strconv.Itoa(APIServerPort),
		"--cert-dir=" + filepath.Join(c.Dir, "certs"),
		"--tls-cert-file=" + c.pki.ServingCert,
		"--tls-private-key-file=" + c.pki.ServingKey,
		"--token-auth-file=" + c.pki.TokenFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.SAPub,
		"--service-account-signing-key-file=" + c.pki.SAKey,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
	if c.withKubelets {
		args = append(args,
			"--authorization-mode=Node,RBAC",
			"--endpoint-reconciler-type=lease",
			"--kubelet-preferred-address-types=InternalIP",
		)
	} else {
		args = append(args,
			"--authorization-mode=RBAC",
			// On loopback-like setups the lease-based reconciler would publish an endpoint for
			// the "kubernetes" service that nothing routes to; tests do not need it.
			"--endpoint-reconciler-type=none",
			// No controller-manager runs, so no "default" ServiceAccount is ever created: let
			// pods be admitted without one.
			"--disable-admission-plugins=ServiceAccount",
		)
	}
	return append(args, c.extraArgs...)
}

// CAPath is the CA certificate that signed kube-apiserver's serving certificate (for
// kube-controller-manager's --root-ca-file, which becomes every pod's ca.crt).
func (c *Cluster) CAPath() string { return filepath.Join(c.Dir, "ca.crt") }

// ServiceAccountKeyPath is the private key service-account tokens are signed with (for
// kube-controller-manager's --service-account-private-key-file).
func (c *Cluster) ServiceAccountKeyPath() string { return c.pki.SAKey }

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) without waiting for it.
func (c *Cluster) StartAPIServer() *Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver != nil {
		if done, _ := c.apiserver.Exited(); !done {
			c.t.Fatalf("harness: kube-apiserver already running (pid %d)", c.apiserver.PID())
		}
	}
	c.apiRuns++
	cmd := exec.Command(filepath.Join(c.binDir, "kube-apiserver"), c.APIServerArgs()...)
	c.apiserver = c.ControlPlane.start(c.t, c.Dir, fmt.Sprintf("kube-apiserver-%d", c.apiRuns), cmd)
	return c.apiserver
}

// StopAPIServer stops kube-apiserver by PID (SIGTERM, then SIGKILL), for API outage tests;
// etcd keeps running.
func (c *Cluster) StopAPIServer() {
	c.mu.Lock()
	p := c.apiserver
	c.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Stop(); err != nil {
		c.t.Fatalf("harness: %v", err)
	}
}

// KillAPIServer kills kube-apiserver by PID with SIGKILL (a crash: open connections are cut,
// nothing is drained); etcd keeps running.
func (c *Cluster) KillAPIServer() {
	c.mu.Lock()
	p := c.apiserver
	c.mu.Unlock()
	if p == nil {
		return
	}
	if err := p.Kill(); err != nil {
		c.t.Fatalf("harness: %v", err)
	}
}

// APIServer returns the current kube-apiserver process.
func (c *Cluster) APIServer() *Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apiserver
}

// WaitReady polls /readyz until it answers "ok" or ctx ends; it fails early when
// kube-apiserver exits.
func (c *Cluster) WaitReady(ctx context.Context) error {
	var last error
	for {
		if done, err := c.APIServer().Exited(); done {
			return fmt.Errorf("kube-apiserver exited: %v (log %s)", err, c.APIServer().LogPath)
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		if last == nil {
			last = fmt.Errorf("/readyz said %q", body)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w; last answer: %v", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// RESTConfig returns a client config for the given bearer token that dials from inside the
// control-plane namespace (for the test's own Go code).
func (c *Cluster) RESTConfig(token string) *rest.Config {
	return &rest.Config{
		Host:            c.Server,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.CAPEM},
		Dial:            c.ControlPlane.DialContext,
		QPS:             500,
		Burst:           1000,
		UserAgent:       "svcproxy-e2e",
	}
}

// WriteKubeconfig writes a kubeconfig for user with the given bearer token, pointing at the
// API server over the underlay: usable by processes in any node namespace.
func (c *Cluster) WriteKubeconfig(path, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: c.Server, CertificateAuthorityData: c.CAPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

// ServiceAccountToken mints a token for the ServiceAccount namespace/name with the
// TokenRequest API (the account must exist).
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	exp := int64(3600)
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for serviceaccount %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// Node is a node network namespace joined to the underlay: eth0 with IP/24 and a default
// route via ControlPlaneIP, its peer on the control-plane bridge, IPv4 forwarding on. kube-apiserver is at
// Cluster.Server from here.
type Node struct {
	Name    string
	NS      *NetNS
	IP      netip.Addr
	Cluster *Cluster
}

// AddNode creates a node namespace on the underlay with the next free address (172.31.0.2,
// .3, ...). name is the Kubernetes node name the test will use for it; nothing is created in
// the API (see RegisterNode).
func (c *Cluster) AddNode(t testing.TB, name string) *Node {
	t.Helper()
	c.mu.Lock()
	host := c.nextHost
	c.nextHost++
	c.mu.Unlock()
	if host > 254 {
		t.Fatal("harness: underlay full")
	}
	ip := netip.AddrFrom4([4]byte{172, 31, 0, byte(host)})
	ns := NewNetNS(t, "svcp-n-")
	if err := c.ControlPlane.WithNetlink(func(h *netlink.Handle) error {
		br, err := h.LinkByName(UnderlayBridge)
		if err != nil {
			return err
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: fmt.Sprintf("un%d", host), MasterIndex: br.Attrs().Index},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(ns.handle)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("adding veth: %w", err)
		}
		return h.LinkSetUp(veth)
	}); err != nil {
		t.Fatalf("harness: underlay link for node %s: %v", name, err)
	}
	if err := ns.WithNetlink(func(h *netlink.Handle) error {
		eth, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(ip.String() + "/24")
		if err != nil {
			return err
		}
		if err := h.AddrAdd(eth, addr); err != nil {
			return err
		}
		if err := h.LinkSetUp(eth); err != nil {
			return err
		}
		// A default route, as every real node has: without one, connect() to a service VIP
		// fails with ENETUNREACH before netfilter or a socket hook ever sees it. It points at
		// the control-plane namespace, which forwards nothing.
		return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: net.ParseIP(ControlPlaneIP)})
	}); err != nil {
		t.Fatalf("harness: configuring eth0 of node %s: %v", name, err)
	}
	// Forwarding, as on every Kubernetes node (kubelet's prerequisites): NodePort traffic to an
	// endpoint on another node is forwarded. The sysctl is the node namespace's own.
	if _, err := ns.Run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1"); err != nil {
		t.Fatalf("harness: node %s: %v", name, err)
	}
	return &Node{Name: name, NS: ns, IP: ip, Cluster: c}
}

// Start starts cmd inside the node namespace (see NetNS.Start); its log is in Cluster.Dir.
func (n *Node) Start(t testing.TB, name string, cmd *exec.Cmd) *Process {
	return n.NS.Start(t, n.Cluster.Dir, n.Name+"-"+name, cmd)
}

// RegisterNode creates the Node object name with the given InternalIP, pod CIDRs and zone
// label (zone may be empty), the way a kubelet and the node IPAM controller would.
func (c *Cluster) RegisterNode(ctx context.Context, name string, ip netip.Addr, zone string, podCIDRs ...string) (*corev1.Node, error) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}
	if zone != "" {
		node.Labels[corev1.LabelTopologyZone] = zone
	}
	if len(podCIDRs) > 0 {
		node.Spec.PodCIDR = podCIDRs[0]
		node.Spec.PodCIDRs = podCIDRs
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating node %s: %w", name, err)
	}
	created.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: ip.String()},
		{Type: corev1.NodeHostName, Address: name},
	}
	updated, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("setting addresses of node %s: %w", name, err)
	}
	return updated, nil
}

// Eventually polls cond every interval until it returns nil or timeout passes, then fails the
// test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
}
