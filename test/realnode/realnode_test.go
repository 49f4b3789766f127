package realnode

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// The Service under test and its addresses.
const (
	webName     = "web"
	webNodePort = 30080
	hostPort    = 8088
)

// suite is one run of the bench: the cluster, the binaries the bench runs itself, and the
// report.
type suite struct {
	t        *testing.T
	b        *Bench
	report   *Report
	workload string // workload binary for node and external processes
	svcproxy string // svcproxy binary for `status` against the nodes' API sockets
	mode     string
	rev      int
	clients  []*ClientPod
	webVIP   string
}

// TestRealNode is make e2e-node: the shipped DaemonSet on two kubelet nodes, on each backend
// of REALNODE_MODES (default iptables,ebpf), through every scenario of issue 9.
func TestRealNode(t *testing.T) {
	images := imageTars(t)
	b := NewBench(t, 2, images)
	s := &suite{t: t, b: b, report: &Report{}, svcproxy: harness.SvcproxyBinary(t)}
	t.Cleanup(func() { t.Log("\n" + s.report.String()) })
	s.workload = buildWorkload(t, b.Dir)
	if d, err := time.ParseDuration(os.Getenv("REALNODE_HOLD")); err == nil {
		// For a person to look at the cluster before it is torn down (bounded).
		t.Cleanup(func() {
			t.Logf("realnode: holding the cluster for %s (REALNODE_HOLD); kubeconfig %s in netns %s", d, b.Cluster.Kubeconfig, b.Cluster.ControlPlane.Name)
			time.Sleep(min(d, 30*time.Minute))
		})
	}

	modes := strings.Split(envOr("REALNODE_MODES", "iptables,ebpf"), ",")
	for i, mode := range modes {
		s.mode = mode
		start := time.Now()
		if i == 0 {
			b.DeploySvcproxy(mode, SvcproxyImage)
			s.deployWorkloads()
		} else {
			s.switchMode(mode)
		}
		err := s.checkDaemons("deploy")
		if err == nil {
			err = s.checkCNI("deploy")
		}
		s.report.Finish(mode, "deploy", time.Since(start), err)
		if err != nil {
			t.Errorf("realnode: %s: deploy: %v", mode, err)
		}
		s.scenario("spread", s.spread)
		s.scenario("hostPort", s.hostPort)
		s.scenario("scale 3->6->1", s.scale)
		s.scenario("rolling update", s.rollingUpdate)
		s.scenario("svcproxy DaemonSet roll", s.daemonSetRoll)
		s.scenario("connected UDP, backend deleted", s.udpBackendDeleted)
		s.scenario("eTP=Local, node drained", s.drainLocal)
		s.scenario("node reboot + API restart", s.reboot)
	}
}

// scenario runs fn, records its outcome and marks the test failed (but goes on) on error.
// REALNODE_SCENARIOS (comma-separated substrings of scenario names) runs only those.
func (s *suite) scenario(name string, fn func(mode, name string) error) {
	if only := os.Getenv("REALNODE_SCENARIOS"); only != "" {
		match := false
		for _, o := range strings.Split(only, ",") {
			match = match || strings.Contains(name, o)
		}
		if !match {
			return
		}
	}
	s.t.Logf("realnode: %s: %s", s.mode, name)
	start := time.Now()
	err := fn(s.mode, name)
	s.report.Finish(s.mode, name, time.Since(start), err)
	if err != nil {
		s.t.Errorf("realnode: %s: %s: %v", s.mode, name, err)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// imageTars returns the image tars of make image, building them when missing.
func imageTars(t *testing.T) []string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := envOr("REALNODE_IMAGES", filepath.Join(root, ".cache", "images"))
	names := []string{"svcproxy.tar", "workload.tar", "pause.tar"}
	var out []string
	missing := false
	for _, n := range names {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err != nil {
			missing = true
		}
		out = append(out, p)
	}
	if missing {
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(root, "hack", "build-image.sh"))
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("realnode: make image: %v\n%s", err, b)
		}
		t.Logf("realnode: built the images in %s", time.Since(start).Round(time.Second))
	}
	return out
}

// buildWorkload builds the workload binary for processes the bench runs on nodes and on the
// external client.
func buildWorkload(t *testing.T, dir string) string {
	t.Helper()
	root, _ := harness.RepoRoot()
	out := filepath.Join(dir, "workload")
	cmd := exec.Command("go", "build", "-o", out, "./test/realnode/cmd/workload")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("realnode: building the workload: %v\n%s", err, b)
	}
	return out
}

// deployWorkloads applies the web Deployment and Service, the eTP=Local Service and one
// client pod per node, and waits for them.
func (s *suite) deployWorkloads() {
	b := s.b
	b.MustKubectl(webManifest(webName, 3, "0")+"---\n"+serviceManifest(webName, webNodePort)+"---\n"+localServiceManifest("web-local", webName), "apply", "-f", "-")
	var pods []string
	for _, n := range b.Nodes {
		pods = append(pods, clientPodManifest("client-"+n.Name, n.Name))
	}
	b.MustKubectl(strings.Join(pods, "---\n"), "apply", "-f", "-")
	s.waitWeb(3)
	s.refreshClients()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svc, err := b.Cluster.Client.CoreV1().Services("default").Get(ctx, webName, metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	s.webVIP = svc.Spec.ClusterIP
}

// waitWeb waits until the web Deployment has n ready replicas and no others.
func (s *suite) waitWeb(n int) {
	s.t.Helper()
	if out, err := s.b.Kubectl("", "rollout", "status", "deploy/"+webName, "--timeout=180s"); err != nil {
		s.t.Fatalf("realnode: web not rolled out: %v\n%s\n%s", err, out, s.b.Describe("default", "app="+webName))
	}
	harness.Eventually(s.t, 90*time.Second, fmt.Sprintf("%d web pods, all ready, none terminating", n), func() error {
		names, err := s.webPods(true)
		if err != nil {
			return err
		}
		all, err := s.webPods(false)
		if err != nil {
			return err
		}
		if len(names) != n || len(all) != n {
			return fmt.Errorf("ready %v, all %v", names, all)
		}
		return nil
	})
}

// webPods returns the names of the web pods (only the Ready, not terminating ones if ready).
func (s *suite) webPods(ready bool) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods, err := s.b.Pods(ctx, "default", "app="+webName)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range pods {
		if ready && (p.DeletionTimestamp != nil || !podReady(&p)) {
			continue
		}
		out = append(out, p.Name)
	}
	sort.Strings(out)
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// refreshClients waits for the client pods to be Ready and records their addresses.
func (s *suite) refreshClients() {
	s.t.Helper()
	s.clients = nil
	for _, n := range s.b.Nodes {
		name := "client-" + n.Name
		var ip string
		harness.Eventually(s.t, 120*time.Second, "client pod "+name+" Ready", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := s.b.Cluster.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !podReady(p) {
				return fmt.Errorf("phase %s", p.Status.Phase)
			}
			ip = p.Status.PodIP
			return nil
		})
		s.clients = append(s.clients, &ClientPod{Name: name, IP: ip, via: n.NS})
	}
}

// switchMode changes the ConfigMap's mode and restarts the DaemonSet, as a user switching
// backends would.
func (s *suite) switchMode(mode string) {
	ms, err := Manifests(mode, SvcproxyImage)
	if err != nil {
		s.t.Fatal(err)
	}
	s.b.MustKubectl(ms["configmap.yaml"], "apply", "-f", "-")
	s.b.MustKubectl("", "-n", "kube-system", "rollout", "restart", "ds/svcproxy")
	s.b.WaitDaemonSet(4 * time.Minute)
	s.scaleWeb(3)
	s.refreshClients()
}

func (s *suite) scaleWeb(n int) {
	s.b.MustKubectl("", "scale", "deploy/"+webName, fmt.Sprintf("--replicas=%d", n))
	s.waitWeb(n)
}

// status asks node's svcproxy for its status over the daemon API socket, as
// `svcproxy status --json` on the node would.
func (s *suite) status(n *Node) (*api.Status, error) {
	sock := filepath.Join(n.RunDir, "svcproxy", "svcproxy.sock")
	out, err := exec.Command(s.svcproxy, "status", "--json", "--api-socket", sock).Output()
	if err != nil {
		return nil, fmt.Errorf("svcproxy status on %s: %w", n.Name, err)
	}
	var st api.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("svcproxy status on %s: %w: %s", n.Name, err, out)
	}
	return &st, nil
}

// checkDaemons checks every node's daemon runs the mode asked for, from the Kubernetes source,
// with a healthy last sync.
func (s *suite) checkDaemons(scenario string) error {
	var errs []string
	for _, n := range s.b.Nodes {
		var st *api.Status
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			st, err = s.status(n)
			if err == nil && st.Mode == s.mode && st.Healthy && st.AppliedGeneration > 0 {
				break
			}
			if time.Now().After(deadline) {
				if err != nil {
					errs = append(errs, err.Error())
				} else {
					errs = append(errs, fmt.Sprintf("%s: mode %q (%s), healthy %v (%s)", n.Name, st.Mode, st.ModeReason, st.Healthy, st.HealthReason))
				}
				break
			}
			time.Sleep(time.Second)
		}
		if st != nil {
			s.report.Note(s.mode, scenario, "%s: mode %s, source %s, %d services, last sync %s", n.Name, st.Mode, st.Source, len(st.Services), st.LastSyncDuration)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// checkCNI checks what the init container installed on each node (the shipped conflist,
// svcproxy-cni and svcproxy-portmap; no other network configuration), and that every pod on
// the pod network got its address from that node's svcproxy (the daemon's allocations hold
// it, inside the Node's pod range).
func (s *suite) checkCNI(scenario string) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	want, err := os.ReadFile(filepath.Join(root, "deploy", "cni", "10-svcproxy.conflist"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range s.b.Nodes {
		confs, _ := filepath.Glob(filepath.Join(n.Dir, "etc-cni", "net.d", "*"))
		if len(confs) != 1 || filepath.Base(confs[0]) != "10-svcproxy.conflist" {
			return fmt.Errorf("%s: CNI configuration directory holds %v, want only 10-svcproxy.conflist", n.Name, confs)
		}
		got, err := os.ReadFile(confs[0])
		if err != nil {
			return err
		}
		if string(got) != string(want) {
			return fmt.Errorf("%s: installed conflist differs from deploy/cni/10-svcproxy.conflist:\n%s", n.Name, got)
		}
		for _, bin := range []string{"svcproxy-cni", "svcproxy-portmap", "loopback"} {
			if fi, err := os.Stat(filepath.Join(n.Dir, "opt-cni", "bin", bin)); err != nil || fi.Mode()&0o111 == 0 {
				return fmt.Errorf("%s: CNI plugin %s not installed: %v", n.Name, bin, err)
			}
		}
		st, err := s.status(n)
		if err != nil {
			return err
		}
		held := map[string]bool{}
		for _, p := range st.Pods {
			for _, ip := range p.IPs {
				held[ip] = true
			}
		}
		node, err := s.b.Cluster.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pods, err := s.b.Cluster.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			return err
		}
		count := 0
		for _, p := range pods.Items {
			if p.Spec.HostNetwork || p.Status.PodIP == "" {
				continue
			}
			count++
			if !held[p.Status.PodIP] {
				return fmt.Errorf("%s: pod %s/%s has %s, which %s's svcproxy did not allocate (allocations %v)", n.Name, p.Namespace, p.Name, p.Status.PodIP, n.Name, held)
			}
			if !cidrContains(node.Spec.PodCIDR, p.Status.PodIP) {
				return fmt.Errorf("%s: pod %s/%s has %s, outside the Node's podCIDR %s", n.Name, p.Namespace, p.Name, p.Status.PodIP, node.Spec.PodCIDR)
			}
		}
		s.report.Note(s.mode, scenario, "%s: only the shipped conflist installed; %d pods, every address allocated by svcproxy from %s", n.Name, count, node.Spec.PodCIDR)
	}
	return nil
}

func cidrContains(cidr, ip string) bool {
	_, n, err := net.ParseCIDR(cidr)
	return err == nil && n.Contains(net.ParseIP(ip))
}

// nodeRun runs `workload run` on node n (its network, mount and cgroup namespaces: a process
// on the node, which the eBPF socket hooks see).
func (s *suite) nodeRun(n *Node, spec LoadSpec) (*LoadResult, error) {
	return runProcess(n.NS, n.Command(s.workload, spec.args()...))
}

// extRun runs `workload run` on the external client.
func (s *suite) extRun(spec LoadSpec) (*LoadResult, error) {
	return runProcess(s.b.Ext.NS, exec.Command(s.workload, spec.args()...))
}

// loadSet runs several load runs at once and collects them; its error lists every run that
// could not run.
type loadSet struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []*LoadResult
	labels  []string
	errs    []string
}

func (l *loadSet) Go(label string, fn func() (*LoadResult, error)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		r, err := fn()
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.errs = append(l.errs, label+": "+err.Error())
			return
		}
		l.results = append(l.results, r)
		l.labels = append(l.labels, label)
	}()
}

func (l *loadSet) Wait() error {
	l.wg.Wait()
	if len(l.errs) > 0 {
		return fmt.Errorf("%s", strings.Join(l.errs, "; "))
	}
	return nil
}

// record adds every result to the report (with its summary line) and returns an error when
// any run failed a request and zeroFailures is set.
func (s *suite) record(name string, l *loadSet, zeroFailures bool) error {
	var bad []string
	for i, r := range l.results {
		s.report.Add(s.mode, name, r)
		s.report.Note(s.mode, name, "%s: %s", l.labels[i], r.Summary())
		if zeroFailures && r.Failed > 0 {
			bad = append(bad, fmt.Sprintf("%s: %d of %d failed", l.labels[i], r.Failed, r.Sent))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("failed requests: %s", strings.Join(bad, "; "))
	}
	return nil
}

// waitProgrammed waits until every node's svcproxy has exactly the ready web pods as the
// active endpoints of the web Service's http port and has applied that state to the kernel
// (the proxy has caught up with the API), and returns how long that took.
func (s *suite) waitProgrammed(timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last string
	for {
		pods, err := s.b.Pods(ctx, "default", "app="+webName)
		if err != nil {
			return 0, err
		}
		var want []string
		for _, p := range pods {
			if p.DeletionTimestamp == nil && podReady(&p) && p.Status.PodIP != "" {
				want = append(want, p.Status.PodIP)
			}
		}
		sort.Strings(want)
		done := true
		for _, n := range s.b.Nodes {
			st, err := s.status(n)
			if err != nil {
				done, last = false, err.Error()
				break
			}
			if st.AppliedGeneration < st.DesiredGeneration {
				done, last = false, fmt.Sprintf("%s has applied generation %d of %d", n.Name, st.AppliedGeneration, st.DesiredGeneration)
				break
			}
			var got []string
			for _, svc := range st.Services {
				if svc.Namespace != "default" || svc.Name != webName {
					continue
				}
				for _, p := range svc.Ports {
					if p.Name != "http" {
						continue
					}
					for _, e := range p.Endpoints {
						if e.State == "active" {
							got = append(got, strings.TrimSuffix(e.Address, ":8080"))
						}
					}
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				done, last = false, fmt.Sprintf("%s programs %v, ready pods %v", n.Name, got, want)
				break
			}
		}
		if done {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("proxies did not program the ready web pods within %s: %s", timeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// spread: traffic to the VIP from a pod on each node and from each node, and to the NodePort
// of each node from the external client, reaches every replica.
func (s *suite) spread(mode, name string) error {
	if d, err := s.waitProgrammed(time.Minute); err != nil {
		return err
	} else if d > time.Second {
		s.report.Note(mode, name, "proxies programmed the ready pods %s after they were ready", d.Round(100*time.Millisecond))
	}
	pods, err := s.webPods(true)
	if err != nil {
		return err
	}
	vip := net.JoinHostPort(s.webVIP, "80")
	spec := func(target string) LoadSpec {
		return LoadSpec{Target: target, Kind: "http", Duration: "3s", Workers: 2, Interval: "5ms", Timeout: "2s"}
	}
	var l loadSet
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range s.clients {
		l.Go("pod "+c.Name+" -> VIP", func() (*LoadResult, error) { return c.Run(ctx, spec(vip)) })
	}
	for _, n := range s.b.Nodes {
		l.Go("node "+n.Name+" -> VIP", func() (*LoadResult, error) { return s.nodeRun(n, spec(vip)) })
		l.Go("external -> "+n.Name+" NodePort", func() (*LoadResult, error) {
			return s.extRun(spec(net.JoinHostPort(n.IP.String(), fmt.Sprint(webNodePort))))
		})
	}
	if err := l.Wait(); err != nil {
		return err
	}
	if err := s.record(name, &l, true); err != nil {
		return err
	}
	for i, r := range l.results {
		for _, p := range pods {
			if r.Backends[p] == 0 {
				return fmt.Errorf("%s never reached %s (replicas %v): %s", l.labels[i], p, pods, r.Summary())
			}
		}
	}
	return nil
}

// hostPort: a pod's hostPort answers on its node's address, from the external client and from
// a pod on the other node.
func (s *suite) hostPort(mode, name string) error {
	n := s.b.Nodes[0]
	pod := "hostport-" + mode
	s.b.MustKubectl(hostPortPodManifest(pod, n.Name, hostPort), "apply", "-f", "-")
	defer s.b.Kubectl("", "delete", "pod", pod, "--wait=true", "--timeout=60s")
	if _, err := s.b.Kubectl("", "wait", "--for=condition=Ready", "pod/"+pod, "--timeout=90s"); err != nil {
		return err
	}
	target := net.JoinHostPort(n.IP.String(), fmt.Sprint(hostPort))
	spec := LoadSpec{Target: target, Kind: "http", Duration: "2s", Workers: 1, Interval: "20ms", Timeout: "2s"}
	var l loadSet
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l.Go("external -> "+target, func() (*LoadResult, error) { return s.extRun(spec) })
	l.Go("pod "+s.clients[1].Name+" -> "+target, func() (*LoadResult, error) { return s.clients[1].Run(ctx, spec) })
	if err := l.Wait(); err != nil {
		return err
	}
	if err := s.record(name, &l, true); err != nil {
		return err
	}
	for i, r := range l.results {
		if r.Backends[pod] == 0 || r.OK == 0 {
			return fmt.Errorf("%s: hostPort %d did not reach %s: %s", l.labels[i], hostPort, pod, r.Summary())
		}
	}
	return nil
}

// scale: 3 -> 6 -> 1 replicas under load; the time until traffic reaches exactly the ready
// replicas is measured after each step.
func (s *suite) scale(mode, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := s.clients[0]
	id, err := c.Start(LoadSpec{Target: net.JoinHostPort(s.webVIP, "80"), Kind: "http", Duration: "90s", Workers: 2, Interval: "10ms", Timeout: "2s"})
	if err != nil {
		return err
	}
	for _, n := range []int{6, 1} {
		start := time.Now()
		s.b.MustKubectl("", "scale", "deploy/"+webName, fmt.Sprintf("--replicas=%d", n))
		s.waitWeb(n)
		ready := time.Since(start)
		want, err := s.webPods(true)
		if err != nil {
			return err
		}
		follow, err := s.followed(ctx, c, want, 60*time.Second)
		if err != nil {
			return fmt.Errorf("scaled to %d: %w", n, err)
		}
		s.report.Note(mode, name, "scale to %d: replicas ready %s after the scale command, traffic on exactly them %s after that (resolution 0.5 s)",
			n, ready.Round(100*time.Millisecond), follow.Round(100*time.Millisecond))
	}
	// End the background run early by waiting for it: it is bounded by its duration.
	r, err := c.Result(ctx, id)
	if err != nil {
		return err
	}
	var l loadSet
	l.results, l.labels = []*LoadResult{r}, []string{"pod " + c.Name + " -> VIP during the scaling"}
	err = s.record(name, &l, true)
	s.scaleWeb(3)
	return err
}

// followed probes from c in 0.5 s runs until one run reaches exactly the pods in want, and
// returns how long that took (from the call).
func (s *suite) followed(ctx context.Context, c *ClientPod, want []string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	var last *LoadResult
	for time.Since(start) < timeout {
		r, err := c.Run(ctx, LoadSpec{Target: net.JoinHostPort(s.webVIP, "80"), Kind: "http", Duration: "500ms", Workers: 4, Interval: "1ms", Timeout: "1s"})
		if err != nil {
			return 0, err
		}
		last = r
		got := make([]string, 0, len(r.Backends))
		for b := range r.Backends {
			got = append(got, b)
		}
		sort.Strings(got)
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("traffic never reached exactly %v; last run: %s", want, last.Summary())
}

// underLoad starts the standard mix of load (fresh HTTP connections and keep-alive TCP
// streams from a pod on each node, HTTP from each node, NodePort from outside) for d, calls
// fn while it runs, and returns the collected runs.
func (s *suite) underLoad(d time.Duration, fn func() error) (*loadSet, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	dur := d.String()
	vip := net.JoinHostPort(s.webVIP, "80")
	stream := net.JoinHostPort(s.webVIP, "9090")
	l := &loadSet{}
	for _, c := range s.clients {
		l.Go("pod "+c.Name+" http -> VIP", func() (*LoadResult, error) {
			return c.Run(ctx, LoadSpec{Target: vip, Kind: "http", Duration: dur, Workers: 2, Interval: "20ms", Timeout: "3s"})
		})
		l.Go("pod "+c.Name+" tcp-stream -> VIP", func() (*LoadResult, error) {
			return c.Run(ctx, LoadSpec{Target: stream, Kind: "tcp-stream", Duration: dur, Streams: 4, Interval: "50ms", Timeout: "3s"})
		})
	}
	for _, n := range s.b.Nodes {
		l.Go("node "+n.Name+" http -> VIP", func() (*LoadResult, error) {
			return s.nodeRun(n, LoadSpec{Target: vip, Kind: "http", Duration: dur, Workers: 1, Interval: "20ms", Timeout: "3s"})
		})
	}
	np := net.JoinHostPort(s.b.Nodes[1].IP.String(), fmt.Sprint(webNodePort))
	l.Go("external http -> "+s.b.Nodes[1].Name+" NodePort", func() (*LoadResult, error) {
		return s.extRun(LoadSpec{Target: np, Kind: "http", Duration: dur, Workers: 1, Interval: "20ms", Timeout: "3s"})
	})
	time.Sleep(2 * time.Second)
	ferr := fn()
	werr := l.Wait()
	if ferr != nil {
		return l, ferr
	}
	return l, werr
}

// rollingUpdate: the web Deployment rolled (maxSurge 1, maxUnavailable 0) under load: zero
// failed requests.
func (s *suite) rollingUpdate(mode, name string) error {
	l, err := s.underLoad(45*time.Second, func() error {
		s.rev++
		s.b.MustKubectl("", "patch", "deploy/"+webName, "-p", fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"bench/rev":"%s-%d"}}}}}`, mode, s.rev))
		start := time.Now()
		s.waitWeb(3)
		s.report.Note(mode, name, "rollout of 3 replicas took %s", time.Since(start).Round(100*time.Millisecond))
		return nil
	})
	if err != nil {
		return err
	}
	return s.record(name, l, true)
}

// daemonSetRoll: svcproxy's own DaemonSet rolled to a new image tag under load: zero failed
// requests.
func (s *suite) daemonSetRoll(mode, name string) error {
	tag := fmt.Sprintf("localhost/svcproxy:roll-%s", mode)
	for _, n := range s.b.Nodes {
		if _, err := n.Ctr("images", "tag", "--force", SvcproxyImage, tag); err != nil {
			return err
		}
	}
	l, err := s.underLoad(60*time.Second, func() error {
		start := time.Now()
		s.b.MustKubectl("", "-n", "kube-system", "set", "image", "ds/svcproxy", "svcproxy="+tag, "install-cni="+tag)
		s.b.WaitDaemonSet(3 * time.Minute)
		s.report.Note(mode, name, "DaemonSet rolled to %s on %d nodes in %s", tag, len(s.b.Nodes), time.Since(start).Round(100*time.Millisecond))
		return nil
	})
	if err != nil {
		return err
	}
	if err := s.record(name, l, true); err != nil {
		return err
	}
	return s.checkDaemons(name)
}

// udpBackendDeleted: a client pod holds one connected UDP socket to the Service; the backend
// it is pinned to is deleted; its datagrams must reach a live backend within a second.
func (s *suite) udpBackendDeleted(mode, name string) error {
	s.scaleWeb(2)
	defer s.scaleWeb(3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := s.clients[0]
	id, err := c.Start(LoadSpec{Target: net.JoinHostPort(s.webVIP, "9091"), Kind: "udp", Duration: "25s", Interval: "20ms", Timeout: "200ms"})
	if err != nil {
		return err
	}
	// Which backend is the socket pinned to?
	var pinned string
	harness.Eventually(s.t, 10*time.Second, "the UDP socket's first answer", func() error {
		r, err := c.partial(id)
		if err != nil {
			return err
		}
		if len(r.FirstSeen) == 0 {
			return fmt.Errorf("no answer yet")
		}
		pinned = r.FirstSeen[0].Name
		return nil
	})
	s.b.MustKubectl("", "delete", "pod", pinned, "--wait=false")
	r, err := c.Result(ctx, id)
	if err != nil {
		return err
	}
	var l loadSet
	l.results, l.labels = []*LoadResult{r}, []string{"pod " + c.Name + " connected UDP socket"}
	_ = s.record(name, &l, false)
	var after []string
	for _, f := range r.FirstSeen {
		if f.Name != pinned {
			after = append(after, f.Name+"@"+f.At)
		}
	}
	if len(after) == 0 {
		return fmt.Errorf("the socket never reached another backend after %s was deleted: %s", pinned, r.Summary())
	}
	gap, err := time.ParseDuration(r.LongestGap)
	if err != nil {
		return fmt.Errorf("longestGap %q: %w", r.LongestGap, err)
	}
	s.report.Note(mode, name, "pinned to %s; then %v; longest gap without an answer %s", pinned, after, gap)
	if gap > time.Second {
		return fmt.Errorf("datagrams went unanswered for %s after %s was deleted (limit 1s): %s", gap, pinned, r.Summary())
	}
	return nil
}

// partial returns the counters of a run still going.
func (c *ClientPod) partial(id string) (*LoadResult, error) {
	resp, err := c.http().Get("http://" + net.JoinHostPort(c.IP, "9000") + "/run/" + id)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var r LoadResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%w: %s", err, b)
	}
	return &r, nil
}

// drainLocal: with an eTP=Local LoadBalancer Service over the web pods, draining a node turns
// its health-check node port unhealthy while the other node's stays healthy.
func (s *suite) drainLocal(mode, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	svc, err := s.b.Cluster.Client.CoreV1().Services("default").Get(ctx, "web-local", metav1.GetOptions{})
	if err != nil {
		return err
	}
	hc := svc.Spec.HealthCheckNodePort
	if hc == 0 {
		return fmt.Errorf("web-local has no healthCheckNodePort")
	}
	drained, other := s.b.Nodes[1], s.b.Nodes[0]
	check := func(n *Node) (int, string, error) {
		var code int
		var body string
		// The connection is dialled inside the external client's namespace (never from the
		// root namespace, whose default route leads off this machine).
		cl := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: s.b.Ext.NS.DialContext, DisableKeepAlives: true}}
		resp, err := cl.Get(fmt.Sprintf("http://%s/", net.JoinHostPort(n.IP.String(), fmt.Sprint(hc))))
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, strings.TrimSpace(string(b))
		return code, body, nil
	}
	for _, n := range s.b.Nodes {
		code, body, err := check(n)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("before the drain, %s health check node port %d: %d %s %v", n.Name, hc, code, body, err)
		}
	}
	start := time.Now()
	if _, err := s.b.Kubectl("", "drain", drained.Name, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=120s"); err != nil {
		return err
	}
	defer func() {
		s.b.MustKubectl("", "uncordon", drained.Name)
		s.b.MustKubectl(clientPodManifest("client-"+drained.Name, drained.Name), "apply", "-f", "-")
		s.b.MustKubectl("", "rollout", "restart", "deploy/"+webName)
		s.waitWeb(3)
		s.refreshClients()
	}()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		dc, db, derr := check(drained)
		oc, ob, oerr := check(other)
		last = fmt.Sprintf("drained %s: %d %s %v; other %s: %d %s %v", drained.Name, dc, db, derr, other.Name, oc, ob, oerr)
		if derr == nil && dc == http.StatusServiceUnavailable && oerr == nil && oc == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("health check node port %d after the drain: %s", hc, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
	s.report.Note(mode, name, "health check node port %d: %s (%s after the drain began)", hc, last, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// reboot: node2 "reboots" (every process killed, its network state and /run lost) while
// kube-apiserver restarts; pods come back with no duplicate IP, and traffic resumes.
func (s *suite) reboot(mode, name string) error {
	n := s.b.Nodes[1]
	before, err := s.podIPs()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := s.clients[0]
	id, err := c.Start(LoadSpec{Target: net.JoinHostPort(s.webVIP, "80"), Kind: "http", Duration: "60s", Workers: 2, Interval: "20ms", Timeout: "2s"})
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	start := time.Now()
	n.Reboot(func() {
		s.b.Cluster.StopAPIServer()
		time.Sleep(3 * time.Second)
		s.b.Cluster.StartAPIServer()
	})
	actx, acancel := context.WithTimeout(ctx, 2*time.Minute)
	if err := s.b.Cluster.WaitReady(actx); err != nil {
		acancel()
		return fmt.Errorf("kube-apiserver after restart: %w", err)
	}
	acancel()
	s.b.WaitNodesReady(3 * time.Minute)
	s.b.WaitDaemonSet(4 * time.Minute)
	// The API still shows the pods of the node as they were before the reboot (Ready, old
	// IPs) until its kubelet has started them again: wait for that first.
	if err := s.waitPodsStartedSince(n, start, 3*time.Minute); err != nil {
		return err
	}
	s.waitWeb(3)
	s.refreshClients()
	back := time.Since(start)
	r, err := c.Result(ctx, id)
	if err != nil {
		return err
	}
	var l loadSet
	l.results, l.labels = []*LoadResult{r}, []string{"pod " + c.Name + " -> VIP while " + n.Name + " rebooted"}
	_ = s.record(name, &l, false)
	after, err := s.podIPs()
	if err != nil {
		return err
	}
	if err := duplicateIPs(after); err != nil {
		return err
	}
	s.report.Note(mode, name, "%s back (node Ready, svcproxy and web Ready) %s after the kill; pod IPs before %d, after %d, no duplicates",
		n.Name, back.Round(time.Second), len(before), len(after))
	return s.spread(mode, name)
}

// waitPodsStartedSince waits until every pod bound to node n has all its containers running,
// started after since, and is Ready.
func (s *suite) waitPodsStartedSince(n *Node, since time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		l, err := s.b.Cluster.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + n.Name})
		cancel()
		var waiting []string
		if err != nil {
			waiting = append(waiting, err.Error())
		} else {
			for _, p := range l.Items {
				ok := podReady(&p) && len(p.Status.ContainerStatuses) > 0
				for _, c := range p.Status.ContainerStatuses {
					if c.State.Running == nil || c.State.Running.StartedAt.Time.Before(since.Truncate(time.Second)) {
						ok = false
					}
				}
				if !ok {
					waiting = append(waiting, p.Namespace+"/"+p.Name)
				}
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pods of %s not restarted and Ready %s after its reboot: %v", n.Name, timeout, waiting)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// podIPs maps pod IP -> pods holding it (pods on the pod network only).
func (s *suite) podIPs() (map[string][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := s.b.Cluster.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, p := range l.Items {
		if p.Spec.HostNetwork || p.Status.PodIP == "" || p.Status.Phase != corev1.PodRunning {
			continue
		}
		out[p.Status.PodIP] = append(out[p.Status.PodIP], p.Namespace+"/"+p.Name)
	}
	return out, nil
}

func duplicateIPs(m map[string][]string) error {
	var dups []string
	for ip, pods := range m {
		if len(pods) > 1 {
			dups = append(dups, fmt.Sprintf("%s: %v", ip, pods))
		}
	}
	if len(dups) > 0 {
		sort.Strings(dups)
		return fmt.Errorf("pod IPs held by more than one running pod: %s", strings.Join(dups, "; "))
	}
	return nil
}
