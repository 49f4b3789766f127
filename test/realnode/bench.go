package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// Prefix names everything the bench makes on the host (cgroups, temporary directories), so a
// bench killed without its cleanups can be swept by the next one (SweepStale).
const Prefix = "svcp-rn-"

// cgroupV2Root is the unified hierarchy of a hybrid (v1 + v2) host such as this one.
const cgroupV2Root = "/sys/fs/cgroup/unified"

// Bench is a control plane and its kubelet nodes.
type Bench struct {
	t       *testing.T
	Dir     string
	KubeBin string
	Images  []string // image tars imported into every node
	Cluster *harness.Cluster
	Nodes   []*Node
	// Ext is an external client on the underlay: no kubelet, no svcproxy, no cgroup hooks.
	Ext *harness.Node
	kcm *harness.Process
}

// Node is one kubelet node: a network namespace on the underlay, a mount namespace, cgroups,
// containerd and kubelet.
type Node struct {
	*harness.Node
	bench      *Bench
	Index      int
	Dir        string // the node's "disk": var/, etc-cni/, opt-cni/, containerd/
	RunDir     string // the node's /run (a tmpfs on a real node: cleared by Reboot)
	MountNS    string // bind-mounted mount namespace
	CgroupV2   string // host path of the node's cgroup v2 subtree
	cgroupsV1  []string
	token      string
	containerd *harness.Process
	kubelet    *harness.Process
}

// NewBench starts the control plane and n nodes with containerd and kubelet. Nodes register
// and stay NotReady until a CNI configuration appears (the DaemonSet installs one).
func NewBench(t *testing.T, n int, images []string) *Bench {
	t.Helper()
	harness.RequireRoot(t)
	if _, err := os.Stat(cgroupV2Root + "/cgroup.procs"); err != nil {
		t.Fatalf("realnode: this bench needs a hybrid cgroup host with the v2 hierarchy at %s: %v", cgroupV2Root, err)
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "unshare", "nsenter", "etcd"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("realnode: %s not found (hack/install-deps.sh installs it): %v", bin, err)
		}
	}
	SweepStale(t)
	kubeBin := harness.KubeBinDir(t)
	dir, err := os.MkdirTemp("", Prefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("REALNODE_KEEP_LOGS") != "" {
			t.Logf("realnode: logs kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	var tokens []string
	for i := 1; i <= n; i++ {
		tokens = append(tokens, fmt.Sprintf("%snode%dtoken,system:node:%s,%s,\"system:nodes\"", Prefix, i, nodeName(i), nodeName(i)))
	}
	b := &Bench{t: t, Dir: dir, KubeBin: kubeBin, Images: images}
	b.Cluster = harness.StartCluster(t, harness.Options{KubeBinDir: kubeBin, WithKubelets: true, Tokens: tokens})
	b.startControllers()
	for i := 1; i <= n; i++ {
		b.Nodes = append(b.Nodes, b.addNode(i))
	}
	b.Ext = b.Cluster.AddNode(t, "external")
	return b
}

func nodeName(i int) string { return fmt.Sprintf("node%d", i) }

// startControllers starts kube-controller-manager (node pod CIDRs, EndpointSlices,
// Deployments, service-account tokens, node lifecycle) and kube-scheduler.
func (b *Bench) startControllers() {
	c := b.Cluster
	b.kcm = c.ControlPlane.Start(b.t, c.Dir, "kube-controller-manager", exec.Command(filepath.Join(b.KubeBin, "kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--root-ca-file="+c.CAPath(),
		"--service-account-private-key-file="+c.ServiceAccountKeyPath(),
		"--use-service-account-credentials=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr="+harness.ClusterCIDR,
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+harness.ServiceCIDR,
		"--node-monitor-grace-period=20s",
		"--concurrent-deployment-syncs=10",
		"--v=1",
	))
	c.ControlPlane.Start(b.t, c.Dir, "kube-scheduler", exec.Command(filepath.Join(b.KubeBin, "kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--v=1",
	))
}

// addNode makes node i: its network namespace on the underlay (IPv4 forwarding, a default
// route), its directories, cgroups and mount namespace, then starts containerd (and imports
// the images) and kubelet.
func (b *Bench) addNode(i int) *Node {
	t := b.t
	hn := b.Cluster.AddNode(t, nodeName(i))
	n := &Node{
		Node:     hn,
		bench:    b,
		Index:    i,
		Dir:      filepath.Join(b.Dir, hn.Name),
		CgroupV2: filepath.Join(cgroupV2Root, fmt.Sprintf("%s%d-%d", Prefix, os.Getpid(), i)),
		token:    fmt.Sprintf("%snode%dtoken", Prefix, i),
	}
	n.RunDir = filepath.Join(n.Dir, "run")
	n.MountNS = filepath.Join(n.Dir, "mntns")
	for _, d := range []string{"var/lib/kubelet", "var/lib/svcproxy", "var/lib/cni", "var/log", "var/tmp", "run",
		"etc-cni/net.d", "opt-cni/bin", "containerd", "sysctl"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// /var/run is a link to /run, as on every Debian host.
	if err := os.Symlink("/run", filepath.Join(n.Dir, "var/run")); err != nil {
		t.Fatal(err)
	}
	// What a node provisioner installs besides the kubelet: the loopback CNI plugin, which
	// containerd's CRI sets up in every pod.
	if err := copyFile("/usr/lib/cni/loopback", filepath.Join(n.Dir, "opt-cni/bin/loopback"), 0o755); err != nil {
		t.Fatalf("realnode: the loopback CNI plugin (Debian containernetworking-plugins): %v", err)
	}
	n.makeCgroups()
	n.makeMountNS()
	b.writeNodeConfig(n)
	n.start()
	return n
}

// makeCgroups creates the node's cgroup v2 subtree and its kubelet cgroupRoot in every v1
// hierarchy, and removes them on cleanup (after every process in them was killed).
func (n *Node) makeCgroups() {
	t := n.bench.t
	if err := os.Mkdir(n.CgroupV2, 0o755); err != nil {
		t.Fatalf("realnode: %v", err)
	}
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hs {
		if h == cgroupV2Root || !isDir(h) {
			continue
		}
		d := filepath.Join(h, n.cgroupRootName())
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("realnode: %v", err)
		}
		n.cgroupsV1 = append(n.cgroupsV1, d)
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), v, 0o644)
				}
				if err != nil {
					t.Fatalf("realnode: %s: %v", d, err)
				}
			}
		}
	}
	t.Cleanup(n.removeCgroups)
}

func (n *Node) cgroupRootName() string { return filepath.Base(n.CgroupV2) }

// killAll kills every process of the node (containerd, shims, pods, kubelet) through the
// cgroup v2 subtree and waits until it is empty.
func (n *Node) killAll() error {
	if _, err := os.Stat(n.CgroupV2); err != nil {
		return nil
	}
	if err := os.WriteFile(filepath.Join(n.CgroupV2, "cgroup.kill"), []byte("1"), 0o644); err != nil {
		return fmt.Errorf("killing the processes of %s: %w", n.Name, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if procs := cgroupProcs(n.CgroupV2); len(procs) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("processes of %s still running after cgroup.kill: %v", n.Name, cgroupProcs(n.CgroupV2))
}

// cgroupProcs lists the PIDs in dir and every cgroup below it.
func cgroupProcs(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		out = append(out, strings.Fields(string(b))...)
		return nil
	})
	return out
}

func (n *Node) removeCgroups() {
	if err := n.killAll(); err != nil {
		n.bench.t.Errorf("realnode: %v", err)
	}
	for _, d := range append([]string{n.CgroupV2}, n.cgroupsV1...) {
		if err := removeCgroupTree(d); err != nil {
			n.bench.t.Errorf("realnode: %v", err)
		}
	}
}

// removeCgroupTree removes a cgroup directory and every cgroup below it, deepest first,
// retrying while the kernel still counts exited tasks.
func removeCgroupTree(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		for try := 0; try < 100; try++ {
			last = syscall.Rmdir(dirs[i])
			if last == nil || errors.Is(last, syscall.ENOENT) {
				last = nil
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if last != nil {
			return fmt.Errorf("removing cgroup %s: %w", dirs[i], last)
		}
	}
	return nil
}

// kubeletSysctls are the host-wide sysctls kubelet rewrites when they differ from these
// values (pkg/kubelet/cm setupKernelTunables); the node's mount namespace shows it files
// holding exactly these values instead.
var kubeletSysctls = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// makeMountNS creates the node's persistent mount namespace (bound to n.MountNS): a slave of
// the host's, made shared inside (so kubelet's volume mounts and the DaemonSet's
// HostToContainer mounts propagate to the containers), with the node's own directories over
// the paths a node owns. Nothing made in it reaches the host's mount namespace.
func (n *Node) makeMountNS() {
	t := n.bench.t
	var script strings.Builder
	script.WriteString("set -e\nmount --make-rshared /\n")
	fmt.Fprintf(&script, "mount --bind %s /var\n", filepath.Join(n.Dir, "var"))
	fmt.Fprintf(&script, "mount --bind %s /run\n", n.RunDir)
	// /etc and /opt become overlays whose changes land in the node's directory, so /etc/cni
	// and /opt/cni exist for the node without a directory made on the host (a mount point
	// made on the host and removed by one bench would detach the mounts of another).
	for _, d := range []string{"etc", "opt"} {
		up, work := filepath.Join(n.Dir, "overlay", d, "upper"), filepath.Join(n.Dir, "overlay", d, "work")
		if err := os.MkdirAll(up, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "mount -t overlay overlay -o lowerdir=/%s,upperdir=%s,workdir=%s /%s\n", d, up, work, d)
	}
	fmt.Fprintf(&script, "mkdir -p /etc/cni /opt/cni\nmount --bind %s /etc/cni\n", filepath.Join(n.Dir, "etc-cni"))
	fmt.Fprintf(&script, "mount --bind %s /opt/cni\n", filepath.Join(n.Dir, "opt-cni"))
	script.WriteString("mount -t bpf bpf /sys/fs/bpf\n")
	fmt.Fprintf(&script, "mount --bind %s %s\n", n.CgroupV2, cgroupV2Root)
	for name, want := range kubeletSysctls {
		cur, err := os.ReadFile("/proc/sys/" + name)
		if err != nil || strings.TrimSpace(string(cur)) == want {
			continue
		}
		f := filepath.Join(n.Dir, "sysctl", strings.ReplaceAll(name, "/", "."))
		if err := os.WriteFile(f, []byte(want+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&script, "mount --bind %s /proc/sys/%s\n", f, name)
	}
	if err := os.WriteFile(n.MountNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("unshare", "--mount="+n.MountNS, "--propagation", "slave", "--", "sh", "-c", script.String()).CombinedOutput()
	if err != nil {
		_ = syscall.Unmount(n.MountNS, syscall.MNT_DETACH)
		t.Fatalf("realnode: mount namespace of %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { n.dropMountNS() })
}

// dropMountNS unbinds the node's mount namespace; it disappears with its last process, and
// with it every mount made inside (pod network namespaces, volumes, the bpffs).
func (n *Node) dropMountNS() {
	if err := syscall.Unmount(n.MountNS, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		n.bench.t.Errorf("realnode: unmounting %s: %v", n.MountNS, err)
	}
}

// Command returns a command that runs name inside the node: its network namespace (the
// caller starts it with n.NS.Do or Start), its mount namespace and its cgroup v2 subtree (so
// the eBPF backend's socket hooks see it, as any process on a real node).
func (n *Node) Command(name string, args ...string) *exec.Cmd {
	script := fmt.Sprintf(`echo $$ > %s/cgroup.procs && exec nsenter --mount=%s -- "$@"`, n.CgroupV2, n.MountNS)
	return exec.Command("sh", append([]string{"-c", script, "sh", name}, args...)...)
}

// writeNodeConfig writes containerd's and kubelet's configuration and kubeconfig.
func (b *Bench) writeNodeConfig(n *Node) {
	containerd := fmt.Sprintf(`version = 2
root = %q
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # root here lacks CAP_SYS_RESOURCE over the host's oom_score_adj (see ../shared/REAL-NODE.md)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, filepath.Join(n.Dir, "containerd"))
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /%s
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
clusterDomain: cluster.local
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%", "nodefs.inodesFree": "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
`, n.IP, n.cgroupRootName())
	files := map[string]string{"containerd.toml": containerd, "kubelet.yaml": kubelet}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(n.Dir, name), []byte(body), 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
	if err := b.Cluster.WriteKubeconfig(filepath.Join(n.Dir, "kubeconfig"), "system:node:"+n.Name, n.token); err != nil {
		b.t.Fatal(err)
	}
}

// start starts containerd, imports the images, and starts kubelet.
func (n *Node) start() {
	t := n.bench.t
	n.containerd = n.NS.Start(t, n.bench.Dir, n.Name+"-containerd", n.Command("containerd", "--config", filepath.Join(n.Dir, "containerd.toml")))
	sock := filepath.Join(n.RunDir, "containerd", "containerd.sock")
	harness.Eventually(t, 30*time.Second, "containerd of "+n.Name, func() error {
		if done, err := n.containerd.Exited(); done {
			t.Fatalf("realnode: containerd of %s exited: %v\n%s", n.Name, err, harness.Tail(n.containerd.LogPath, 30))
		}
		return exec.Command("ctr", "-a", sock, "version").Run()
	})
	for _, img := range n.bench.Images {
		if out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--no-unpack", img).CombinedOutput(); err != nil {
			t.Fatalf("realnode: importing %s into %s: %v: %s", img, n.Name, err, out)
		}
	}
	n.kubelet = n.NS.Start(t, n.bench.Dir, n.Name+"-kubelet", n.Command(filepath.Join(n.bench.KubeBin, "kubelet"),
		"--config="+filepath.Join(n.Dir, "kubelet.yaml"),
		"--kubeconfig="+filepath.Join(n.Dir, "kubeconfig"),
		"--hostname-override="+n.Name,
		"--node-ip="+n.IP.String(),
		"--v=1",
	))
}

// Ctr runs ctr against the node's containerd (namespace k8s.io).
func (n *Node) Ctr(args ...string) (string, error) {
	sock := filepath.Join(n.RunDir, "containerd", "containerd.sock")
	out, err := exec.Command("ctr", append([]string{"-a", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s on %s: %w: %s", strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// Kubectl runs kubectl from the control-plane namespace with the admin kubeconfig; stdin may
// be empty.
func (b *Bench) Kubectl(stdin string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(b.KubeBin, "kubectl"), append([]string{"--kubeconfig=" + b.Cluster.Kubeconfig, "--request-timeout=60s"}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := b.Cluster.ControlPlane.Do(cmd.Run)
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// MustKubectl is Kubectl that fails the test on error.
func (b *Bench) MustKubectl(stdin string, args ...string) string {
	b.t.Helper()
	out, err := b.Kubectl(stdin, args...)
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// WaitNodesReady waits until every node is Ready.
func (b *Bench) WaitNodesReady(timeout time.Duration) {
	b.t.Helper()
	harness.Eventually(b.t, timeout, "every node Ready", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, n := range b.Nodes {
			node, err := b.Cluster.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !nodeReady(node) {
				return fmt.Errorf("node %s not Ready", n.Name)
			}
		}
		return nil
	})
}

func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Reboot simulates a node reboot: every process of the node is killed (kubelet, containerd,
// shims, svcproxy, pods), what a reboot loses is dropped (the mount namespace with the pods'
// network namespaces, volumes and the bpffs; /run; every link but lo and eth0 with their
// routes, svcproxy's routes, the whole netfilter ruleset and conntrack), then containerd and
// kubelet start again. The node's "disk" (containerd's images and kubelet's and svcproxy's
// state under /var) stays. apiOutage, when set, runs while the node is down.
func (n *Node) Reboot(apiOutage func()) {
	t := n.bench.t
	t.Helper()
	if err := n.killAll(); err != nil {
		t.Fatal(err)
	}
	_ = n.kubelet.Kill()
	_ = n.containerd.Kill()
	n.dropMountNS()
	if err := os.RemoveAll(n.RunDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(n.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `set -e
for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
  case $l in lo|eth0) ;; *) ip link del "$l" 2>/dev/null || true ;; esac
done
ip route flush proto 152 || true
nft flush ruleset
conntrack -F 2>/dev/null || true
`
	if out, err := n.NS.Run("sh", "-c", script); err != nil {
		t.Fatalf("realnode: resetting the network of %s: %v: %s", n.Name, err, out)
	}
	if apiOutage != nil {
		apiOutage()
	}
	n.makeMountNS()
	n.start()
}

// SweepStale removes what a bench killed without its cleanups left: processes in cgroups
// named with Prefix (by their cgroup, so only the bench's own), those cgroups, and mount
// namespaces bound under temporary directories named with Prefix.
func SweepStale(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(cgroupV2Root, Prefix+"*"))
	for _, d := range dirs {
		if benchAlive(d) {
			continue // another bench's, still running
		}
		_ = os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0o644)
		time.Sleep(200 * time.Millisecond)
		if err := removeCgroupTree(d); err != nil {
			t.Logf("realnode: stale %s: %v", d, err)
		} else {
			t.Logf("realnode: removed stale cgroup %s", d)
		}
	}
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + Prefix + "*")
	for _, d := range v1 {
		if strings.HasPrefix(d, cgroupV2Root) || benchAlive(d) {
			continue
		}
		_ = removeCgroupTree(d)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	var stale []string
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) <= 4 || !strings.Contains(f[4], "/"+Prefix) {
			continue
		}
		// The bench's directory holds the PID of the test binary that made it.
		i := strings.Index(f[4], "/"+Prefix)
		dir := f[4][:i+1] + strings.SplitN(f[4][i+1:], "/", 2)[0]
		if pid, err := os.ReadFile(filepath.Join(dir, "pid")); err == nil {
			if _, err := os.Stat("/proc/" + strings.TrimSpace(string(pid))); err == nil {
				continue
			}
		}
		stale = append(stale, f[4])
	}
	for i := len(stale) - 1; i >= 0; i-- {
		_ = syscall.Unmount(stale[i], syscall.MNT_DETACH)
	}
}

// benchAlive reports whether the bench that named cgroup dir (Prefix<pid>-<node>) still runs.
func benchAlive(dir string) bool {
	pid, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(dir), Prefix), "-")
	if !ok {
		return false
	}
	_, err := os.Stat("/proc/" + pid)
	return err == nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
