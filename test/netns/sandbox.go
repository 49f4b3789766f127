package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Addresses of every sandbox. They are fixed because each sandbox lives in namespaces of its
// own, so two sandboxes never see each other's addresses.
var (
	// Gateway is the node's address on the pod bridge, every pod's default route.
	Gateway = netip.MustParseAddr("10.244.1.1")
	// PodPrefix is the node's pod range (podCIDR).
	PodPrefix = netip.MustParsePrefix("10.244.1.0/24")
	// ClusterPrefix holds every pod IP of the cluster (clusterCIDR).
	ClusterPrefix = netip.MustParsePrefix("10.244.0.0/16")
	// ServicePrefix holds every VIP (serviceCIDR).
	ServicePrefix = netip.MustParsePrefix("10.96.0.0/16")
	// NodeUnderlayIP is the node's address on the underlay link to the external client.
	NodeUnderlayIP = netip.MustParseAddr("172.31.0.2")
	// ExternalClientIP is the external client's address on the underlay.
	ExternalClientIP = netip.MustParseAddr("172.31.0.10")
	// UnderlayPrefix is the underlay subnet.
	UnderlayPrefix = netip.MustParsePrefix("172.31.0.0/24")
)

// BridgeName is the node's pod bridge, as in the default svcproxy config.
const BridgeName = "svc0"

// NamePrefix starts the name of every namespace and cgroup the harness makes.
const NamePrefix = "svcpt-"

// Namespace is a network namespace made by the harness, known to `ip netns`.
type Namespace struct {
	Name string
}

// Path is the namespace's bind mount, usable with nsenter --net.
func (n *Namespace) Path() string { return filepath.Join("/var/run/netns", n.Name) }

// Pod is a pod namespace wired to the node bridge.
type Pod struct {
	Namespace
	// PodName is the short name the pod's servers answer with (e.g. "pod-a").
	PodName string
	IP      netip.Addr
	// HostIf is the node-side veth of the pod, a port of the bridge.
	HostIf string
}

// PodSpec asks for one pod. A zero IP takes the next free address from .10 upwards.
type PodSpec struct {
	Name string
	IP   netip.Addr
}

// Options shape a sandbox.
type Options struct {
	// Pods to create on the node bridge.
	Pods []PodSpec
	// External adds the external client namespace on the underlay link.
	External bool
	// Cgroup makes a cgroup v2 directory for the sandbox; servers and probes started through
	// the sandbox run inside it (a BPF socket-LB backend attaches there).
	Cgroup bool
	// BPFFS mounts a bpffs instance of the sandbox's own (in the host mount namespace, under
	// RunDir) where an eBPF backend pins its maps and links; Close unmounts it.
	BPFFS bool
	// Dir holds logs, configs and state; a fresh temp dir when empty.
	Dir string
	// Logger receives progress messages; slog.Default() when nil.
	Logger *slog.Logger
	// PodServer is the podserver binary (see BuildPodServer), needed by StartServer and Probe.
	PodServer string
}

// Sandbox is one topology: a node namespace with the bridge, pods, maybe an external client,
// and every process started in them. Close removes it all.
type Sandbox struct {
	// ID is unique per sandbox and starts with RunPrefix().
	ID string
	// Dir is the sandbox's scratch directory.
	Dir  string
	Node *Namespace
	// External is the external client, nil unless Options.External.
	External *Namespace
	// Cgroup is the cgroup v2 directory processes run in, "" unless Options.Cgroup.
	Cgroup string
	// PodServer is the podserver binary.
	PodServer string
	// BPFFS is the sandbox's bpffs mount, "" unless Options.BPFFS.
	BPFFS string
	// RunDir is a short directory for unix sockets (a socket path holds at most 107 bytes,
	// too few for a test's TempDir), /tmp/<ID>.run, removed by Close.
	RunDir string

	log      *slog.Logger
	ownDir   bool
	mu       sync.Mutex
	pods     []*Pod
	nss      []string
	procs    []*Process
	nextHost int
	closed   bool
}

// RunPrefix is the name prefix of everything this process makes: NamePrefix, the process ID and
// the process's start time, so that concurrent test processes never share it and SweepRun of
// one never touches another's namespaces.
func RunPrefix() string {
	start := "0"
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// Field 22 (starttime) counts after the ")" that closes the command name.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 19 {
				start = f[19]
			}
		}
	}
	st, _ := strconv.ParseUint(start, 10, 64)
	return fmt.Sprintf("%s%s%s-", NamePrefix, strconv.FormatInt(int64(os.Getpid()), 36), strconv.FormatUint(st, 36))
}

// StopMarker is a file whose existence makes New refuse to build sandboxes for the run
// prefix (RunPrefix()): a test binary being interrupted creates it before it sweeps, so tests
// still running cannot build new namespaces behind the sweep's back.
func StopMarker(prefix string) string { return filepath.Join(os.TempDir(), prefix+"stopping") }

func stopping() error {
	if _, err := os.Stat(StopMarker(RunPrefix())); err == nil {
		return errors.New("netns: this test process is shutting down; no new sandbox")
	}
	return nil
}

// New builds a sandbox. On error everything already made is removed again.
func New(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if err := stopping(); err != nil {
		return nil, err
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("netns: random name: %w", err)
	}
	s := &Sandbox{ID: RunPrefix() + hex.EncodeToString(rnd[:]), log: opts.Logger, nextHost: 10, PodServer: opts.PodServer}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("sandbox", s.ID)
	s.Dir = opts.Dir
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("", s.ID+"-"); err != nil {
			return nil, fmt.Errorf("netns: scratch dir: %w", err)
		}
		s.ownDir = true
	} else if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("netns: scratch dir: %w", err)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.RunDir = filepath.Join(os.TempDir(), s.ID+".run")
	if err := os.Mkdir(s.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("netns: run dir: %w", err)
	}
	if opts.Cgroup {
		if err := s.makeCgroup(); err != nil {
			return nil, err
		}
	}
	if opts.BPFFS {
		dir := filepath.Join(s.RunDir, "bpffs")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("netns: bpffs dir: %w", err)
		}
		if _, err := run(ctx, "mount", "-t", "bpf", "bpf", dir); err != nil {
			return nil, fmt.Errorf("netns: mount bpffs: %w", err)
		}
		s.BPFFS = dir
	}
	if s.Node, err = s.addNamespace(ctx, "node"); err != nil {
		return nil, err
	}
	node := s.Node.Name
	if err := runAll(ctx,
		[]string{"ip", "-n", node, "link", "add", BridgeName, "type", "bridge"},
		[]string{"ip", "-n", node, "addr", "add", netip.PrefixFrom(Gateway, PodPrefix.Bits()).String(), "dev", BridgeName},
		[]string{"ip", "-n", node, "link", "set", BridgeName, "up"},
		// Per-netns sysctls, set in the node namespace only.
		[]string{"ip", "netns", "exec", node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
	); err != nil {
		return nil, fmt.Errorf("netns: node %s: %w", node, err)
	}
	// br_netfilter makes bridged IPv4 traffic pass iptables, so a pod reaching itself
	// through a VIP is DNATed on the bridge and sent back out its own port (hairpin). Its
	// sysctls are per network namespace; when the kernel has no br_netfilter the directory
	// is absent and routed traffic through the gateway still works.
	if _, err := run(ctx, "ip", "netns", "exec", node, "test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		if err := runAll(ctx, []string{"ip", "netns", "exec", node, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"}); err != nil {
			return nil, fmt.Errorf("netns: node %s: %w", node, err)
		}
	} else {
		s.log.Warn("br_netfilter sysctls absent in the node namespace; bridged traffic bypasses iptables")
	}
	for _, p := range opts.Pods {
		if _, err := s.AddPod(ctx, p); err != nil {
			return nil, err
		}
	}
	if opts.External {
		if err := s.addExternal(ctx); err != nil {
			return nil, err
		}
	}
	s.log.Debug("sandbox ready", "node", node, "pods", len(opts.Pods), "external", opts.External)
	return s, nil
}

func (s *Sandbox) addNamespace(ctx context.Context, role string) (*Namespace, error) {
	if err := stopping(); err != nil {
		return nil, err
	}
	name := s.ID + "-" + role
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("netns: create namespace: %w", err)
	}
	s.mu.Lock()
	s.nss = append(s.nss, name)
	s.mu.Unlock()
	if _, err := run(ctx, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, fmt.Errorf("netns: %s: %w", name, err)
	}
	return &Namespace{Name: name}, nil
}

// AddPod creates a pod namespace, joins it to the bridge by a veth (hairpin on the bridge
// port) and gives it spec.IP (or the next free address) with a default route via Gateway.
func (s *Sandbox) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	s.mu.Lock()
	ip := spec.IP
	if !ip.IsValid() {
		b := PodPrefix.Addr().As4()
		b[3] = byte(s.nextHost)
		ip = netip.AddrFrom4(b)
		s.nextHost++
	}
	hostIf := fmt.Sprintf("veth%d", len(s.pods))
	s.mu.Unlock()
	if spec.Name == "" || !PodPrefix.Contains(ip) || ip == Gateway {
		return nil, fmt.Errorf("netns: pod %q: needs a name and an address in %s other than the gateway, got %v", spec.Name, PodPrefix, ip)
	}
	ns, err := s.addNamespace(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	node := s.Node.Name
	if err := runAll(ctx,
		// Both ends are born inside the harness's namespaces; nothing touches the root one.
		[]string{"ip", "-n", node, "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		[]string{"ip", "-n", node, "link", "set", hostIf, "master", BridgeName},
		[]string{"ip", "-n", node, "link", "set", hostIf, "type", "bridge_slave", "hairpin", "on"},
		[]string{"ip", "-n", node, "link", "set", hostIf, "up"},
		[]string{"ip", "-n", ns.Name, "addr", "add", netip.PrefixFrom(ip, PodPrefix.Bits()).String(), "dev", "eth0"},
		[]string{"ip", "-n", ns.Name, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", ns.Name, "route", "add", "default", "via", Gateway.String()},
	); err != nil {
		return nil, fmt.Errorf("netns: pod %s: %w", spec.Name, err)
	}
	p := &Pod{Namespace: *ns, PodName: spec.Name, IP: ip, HostIf: hostIf}
	s.mu.Lock()
	s.pods = append(s.pods, p)
	s.mu.Unlock()
	return p, nil
}

func (s *Sandbox) addExternal(ctx context.Context) error {
	ns, err := s.addNamespace(ctx, "ext")
	if err != nil {
		return err
	}
	node := s.Node.Name
	if err := runAll(ctx,
		[]string{"ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns.Name},
		[]string{"ip", "-n", node, "addr", "add", netip.PrefixFrom(NodeUnderlayIP, UnderlayPrefix.Bits()).String(), "dev", "eth0"},
		[]string{"ip", "-n", node, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", ns.Name, "addr", "add", netip.PrefixFrom(ExternalClientIP, UnderlayPrefix.Bits()).String(), "dev", "eth0"},
		[]string{"ip", "-n", ns.Name, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", ns.Name, "route", "add", ServicePrefix.String(), "via", NodeUnderlayIP.String()},
		// A real node has a default route to its upstream router; here the external client
		// plays that router (it does not forward, so nothing leaves the sandbox). Like
		// kube-proxy, an iptables data path needs a route covering the service range for
		// connections the node itself opens: without one, connect() fails with ENETUNREACH
		// before the nat OUTPUT chain can DNAT.
		[]string{"ip", "-n", node, "route", "add", "default", "via", ExternalClientIP.String()},
	); err != nil {
		return fmt.Errorf("netns: external client: %w", err)
	}
	s.External = ns
	return nil
}

// RouteVia adds, in the external client, a route to dst via the node (for external IPs and
// load-balancer IPs that are not on the underlay).
func (s *Sandbox) RouteVia(ctx context.Context, dst netip.Prefix) error {
	if s.External == nil {
		return errors.New("netns: RouteVia: the sandbox has no external client")
	}
	_, err := run(ctx, "ip", "-n", s.External.Name, "route", "add", dst.String(), "via", NodeUnderlayIP.String())
	return err
}

// Pods returns the pods in creation order.
func (s *Sandbox) Pods() []*Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Pod(nil), s.pods...)
}

// Pod returns the pod with the given name, or nil.
func (s *Sandbox) Pod(name string) *Pod {
	for _, p := range s.Pods() {
		if p.PodName == name {
			return p
		}
	}
	return nil
}

// Close stops every process the sandbox started (SIGTERM, then SIGKILL), deletes its
// namespaces (which deletes every interface in them) and its cgroup, and removes the scratch
// directory it made. It returns every failure joined; it is safe to call twice.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	procs := append([]*Process(nil), s.procs...)
	nss := append([]string(nil), s.nss...)
	s.mu.Unlock()

	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(ctx, 3*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNamespace(ctx, nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if s.BPFFS != "" {
		// Unmounting the sandbox's own bpffs instance drops every pin in it, which detaches
		// whatever links a backend pinned there.
		if _, err := run(ctx, "umount", s.BPFFS); err != nil {
			if _, err2 := run(ctx, "umount", "-l", s.BPFFS); err2 != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.Cgroup != "" {
		if err := removeCgroup(s.Cgroup); err != nil {
			errs = append(errs, err)
		}
	}
	if s.RunDir != "" {
		if m := mountsUnder(s.RunDir); len(m) > 0 {
			errs = append(errs, fmt.Errorf("netns: %s still has mounts %v, kept", s.RunDir, m))
		} else if err := os.RemoveAll(s.RunDir); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ownDir && os.Getenv("SVCPROXY_TEST_KEEP") == "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteNamespace kills whatever still runs in the namespace (only processes inside a
// namespace this process made, so ours) and deletes it.
func deleteNamespace(ctx context.Context, name string) error {
	if out, err := run(ctx, "ip", "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				if p, err := os.FindProcess(pid); err == nil {
					p.Kill()
				}
			}
		}
	}
	if _, err := run(ctx, "ip", "netns", "del", name); err != nil {
		if _, serr := os.Stat(filepath.Join("/var/run/netns", name)); os.IsNotExist(serr) {
			return nil
		}
		return fmt.Errorf("netns: delete namespace: %w", err)
	}
	return nil
}

// SweepRun deletes every namespace, cgroup and run directory whose name starts with prefix (normally
// RunPrefix(), so only this process's leftovers). It returns what it removed.
func SweepRun(ctx context.Context, prefix string) ([]string, error) {
	if !strings.HasPrefix(prefix, NamePrefix) || len(prefix) <= len(NamePrefix) {
		return nil, fmt.Errorf("netns: SweepRun: prefix %q is not a run prefix", prefix)
	}
	var removed []string
	var errs []error
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("netns: SweepRun: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := deleteNamespace(ctx, e.Name()); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, "netns "+e.Name())
			}
		}
	}
	// The stop marker is not removed here: a sweep during shutdown needs it in place.
	runDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*.run"))
	for _, d := range runDirs {
		// A bpffs still mounted inside goes first (never delete through a mount).
		for _, m := range mountsUnder(d) {
			if _, err := run(ctx, "umount", "-l", m); err != nil {
				errs = append(errs, err)
			} else {
				removed = append(removed, "mount "+m)
			}
		}
		if len(mountsUnder(d)) > 0 {
			errs = append(errs, fmt.Errorf("netns: SweepRun: %s still has mounts, kept", d))
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, "dir "+d)
		}
	}
	if root, err := cgroup2Root(); err == nil {
		cgs, _ := os.ReadDir(root)
		for _, e := range cgs {
			if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
				if err := removeCgroup(filepath.Join(root, e.Name())); err != nil {
					errs = append(errs, err)
				} else {
					removed = append(removed, "cgroup "+e.Name())
				}
			}
		}
	}
	return removed, errors.Join(errs...)
}

// mountsUnder lists mount points at or below dir.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			out = append(out, f[1])
		}
	}
	return out
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

func runAll(ctx context.Context, cmds ...[]string) error {
	for _, c := range cmds {
		if _, err := run(ctx, c[0], c[1:]...); err != nil {
			return err
		}
	}
	return nil
}
