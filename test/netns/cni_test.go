package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/svcproxy/svcproxy/api"
)

// The service of the CNI test: its endpoints are the CNI-registered pods labelled app=web.
var (
	cniVIP      = netip.MustParseAddr("10.96.0.80")
	cniSelector = map[string]string{"app": "web"}
)

const (
	cniPodPort = 8080
	// cniWait bounds every wait for the daemon to follow a pod change (status, data path).
	cniWait = 15 * time.Second
	// cniConns connections over two endpoints: each must get at least 15% (30). One pod's
	// count is Binomial(200, 1/2) (mean 100, sd 7.1): fewer than 30 is 9.9 sd below the mean,
	// P < 1e-20, so a fair spread never fails this.
	cniConns = 200
)

// cniWorld is the sandbox, the daemon and the CNI network of one mode.
type cniWorld struct {
	t    *testing.T
	ctx  context.Context
	mode string
	s    *Sandbox
	d    *Daemon
	cni  *CNI
}

// TestCNIRealDaemon drives the real svcproxy-cni plugin with the real cnitool inside a node
// namespace against the real svcproxy daemon: pod IPs from the daemon's range, pods whose
// labels match a selector become the service's endpoints and get traffic through the VIP,
// CHECK, DEL (twice), GC with valid attachments and without, STATUS up and down (code 50),
// and pod IPs across a daemon restart.
func TestCNIRealDaemon(t *testing.T) {
	RequireRoot(t)
	bin, err := bins.svcproxy()
	if err != nil {
		t.Fatalf("svcproxy binary: %v", err)
	}
	cniBin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := BuildCNI(ctx, cniBin); err != nil {
		t.Fatal(err)
	}
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testCNIRealDaemon(t, mode, bin, cniBin)
		})
	}
}

func testCNIRealDaemon(t *testing.T, mode, bin, cniBin string) {
	w := newCNIWorld(t, mode, bin, cniBin)

	// ADD three pods: two labelled app=web, one app=other (the client).
	webA, ipA := w.add("web-a", map[string]string{"app": "web"})
	webB, ipB := w.add("web-b", map[string]string{"app": "web", "tier": "front"})
	other, ipO := w.add("other", map[string]string{"app": "other"})
	if ipA == ipB || ipA == ipO || ipB == ipO {
		t.Fatalf("pod addresses not distinct: web-a %v, web-b %v, other %v", ipA, ipB, ipO)
	}
	st := w.waitStatus("3 pod IPs used, endpoints web-a and web-b", func(st *api.Status) bool {
		return podUsed(st) == 3 && slices.Equal(cniEndpoints(st), sortedAddrs(ipA, ipB))
	})
	t.Logf("after 3 ADDs: pod range %+v, endpoints %v", podRange(st), cniEndpoints(st))

	// Servers in every pod; through the VIP, the client pod and the node reach both web pods
	// and never the other one (which serves on the same port).
	for _, p := range []*Pod{webA, webB, other} {
		if _, err := w.s.StartServer(w.ctx, p, ServeSpec{TCP: []uint16{cniPodPort}}); err != nil {
			t.Fatal(err)
		}
	}
	w.requireSpread("client pod -> VIP", &other.Namespace, webA, webB)
	w.requireSpread("node -> VIP", w.s.Node, webA, webB)

	// CHECK passes for every pod.
	for _, p := range []*Pod{webA, webB, other} {
		w.cnitoolOK("check", p)
	}

	// DEL web-a: the VIP soon reaches web-b only; DEL again is a no-op success.
	w.cnitoolOK("del", webA)
	w.waitStatus("2 pod IPs used, endpoints web-b", func(st *api.Status) bool {
		return podUsed(st) == 2 && slices.Equal(cniEndpoints(st), sortedAddrs(ipB))
	})
	w.waitOnly("after DEL of web-a", &other.Namespace, webB)
	if link := w.linkIn(webA, "eth0"); link {
		t.Errorf("DEL of web-a left eth0 in its namespace")
	}
	w.cnitoolOK("del", webA)
	if st := w.status(); podUsed(st) != 2 || !slices.Equal(cniEndpoints(st), sortedAddrs(ipB)) {
		t.Errorf("second DEL of web-a changed the state: used %d, endpoints %v; want 2 and [%v]", podUsed(st), cniEndpoints(st), ipB)
	}

	// GC with valid attachments: a pod whose sandbox died without DEL (a leaked allocation,
	// labelled app=web so it is an endpoint) is freed; web-b and other stay.
	leak, ipL := w.add("leak", map[string]string{"app": "web"})
	w.waitStatus("3 pod IPs used, endpoints web-b and leak", func(st *api.Status) bool {
		return podUsed(st) == 3 && slices.Equal(cniEndpoints(st), sortedAddrs(ipB, ipL))
	})
	if err := w.s.DeleteNamespace(w.ctx, &leak.Namespace); err != nil {
		t.Fatal(err)
	}
	valid := []types.GCAttachment{{ContainerID: ContainerID(&webB.Namespace), IfName: "eth0"}, {ContainerID: ContainerID(&other.Namespace), IfName: "eth0"}}
	gc := func() {
		t.Helper()
		if out, cerr, err := w.cni.Plugin(w.ctx, "GC", SvcproxyPlugin(w.d.APISocket), map[string]any{"cni.dev/valid-attachments": valid}); err != nil || cerr != nil {
			t.Fatalf("GC with valid attachments web-b and other: %v %v (%s)", err, cerr, out)
		}
	}
	// The first GC only marks the leaked allocation missing: the runtime's list may be older
	// than an ADD in flight, so nothing is freed before the grace period (ipam.podGCGracePeriod,
	// 1s here) has passed with the allocation missing at every GC.
	gc()
	if st := w.status(); podUsed(st) != 3 {
		t.Fatalf("the first GC freed an allocation at once: %d pod IPs used, want 3", podUsed(st))
	}
	time.Sleep(cniGCGrace + 100*time.Millisecond)
	gc()
	w.waitStatus("GC: 2 pod IPs used, endpoints web-b", func(st *api.Status) bool {
		return podUsed(st) == 2 && slices.Equal(cniEndpoints(st), sortedAddrs(ipB))
	})
	cl := api.NewClient(w.d.APISocket)
	if _, err := cl.CheckPod(w.ctx, api.PodAttachment{ContainerID: ContainerID(&leak.Namespace), IfName: "eth0"}); api.ErrorCode(err) != api.CodeNoAllocation {
		t.Errorf("leaked pod after GC: %v, want no allocation (code %d)", err, api.CodeNoAllocation)
	}
	for _, p := range []*Pod{webB, other} {
		w.cnitoolOK("check", p)
	}
	w.requireOnly("after GC", &other.Namespace, webB)

	// STATUS succeeds while the daemon runs, fails with code 50 once it is stopped.
	w.cnitoolOK("status", other)
	if err := w.d.Stop(w.ctx, syscall.SIGTERM, 30*time.Second); err != nil {
		t.Fatalf("svcproxy should exit 0 on SIGTERM: %v", err)
	}
	if out, err := w.cni.Cnitool(w.ctx, "status", &other.Namespace, CNIArgs{}); err == nil {
		t.Errorf("cnitool status with the daemon stopped succeeded (%q), want a failure", out)
	}
	if out, cerr, err := w.cni.Plugin(w.ctx, "STATUS", SvcproxyPlugin(w.d.APISocket), nil); err != nil || cerr == nil || cerr.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS with the daemon stopped: error %v, CNI error %v (stdout %q); want code %d", err, cerr, out, types.ErrPluginNotAvailable)
	}

	// Restart: the pod IPs are still held, CHECK passes, a repeated ADD for the same container
	// (its sandbox re-created, so the same netns path) gets the same address.
	w.startDaemon()
	st = w.waitStatus("after restart: 2 pod IPs used, endpoints web-b", func(st *api.Status) bool {
		return podUsed(st) == 2 && slices.Equal(cniEndpoints(st), sortedAddrs(ipB))
	})
	t.Logf("after restart: pod range %+v, endpoints %v", podRange(st), cniEndpoints(st))
	w.cnitoolOK("status", other)
	for _, p := range []*Pod{webB, other} {
		w.cnitoolOK("check", p)
	}
	// The same container in a re-created sandbox (same netns path, so the same container ID
	// for cnitool): the repeated ADD gets the same address, and the VIP reaches the pod again.
	_ = t.Run("repeated ADD of a re-created pod keeps its address", func(t *testing.T) {
		w := w.with(t)
		if err := w.s.RecreateNamespace(w.ctx, &webB.Namespace); err != nil {
			t.Fatal(err)
		}
		_, ipB2 := w.add("web-b", map[string]string{"app": "web", "tier": "front"}, &webB.Namespace)
		if ipB2 != ipB {
			t.Errorf("repeated ADD of web-b's container after a daemon restart got %v, want its address %v", ipB2, ipB)
		}
		if st := w.status(); podUsed(st) != 2 || !slices.Equal(cniEndpoints(st), sortedAddrs(ipB)) {
			t.Errorf("repeated ADD changed the state: used %d, endpoints %v; want 2 and [%v]", podUsed(st), cniEndpoints(st), ipB)
		}
	}) && t.Run("VIP reaches the re-created pod", func(t *testing.T) {
		w := w.with(t)
		if _, err := w.s.StartServer(w.ctx, webB, ServeSpec{TCP: []uint16{cniPodPort}}); err != nil {
			t.Fatal(err)
		}
		w.requireOnly("after restart and repeated ADD", &other.Namespace, webB)
	})

	// cnitool gc names no valid attachment: everything is freed and the service has no endpoints.
	w.cnitoolOK("gc", other)
	w.waitStatus("cnitool gc: 0 pod IPs used, no endpoints", func(st *api.Status) bool {
		return podUsed(st) == 0 && len(cniEndpoints(st)) == 0
	})
	for _, p := range []*Pod{webB, other} {
		w.cnitoolOK("del", p)
	}
}

// cniGCGrace is the daemon's pod GC grace period in the CNI tests.
const cniGCGrace = time.Second

func newCNIWorld(t *testing.T, mode, bin, cniBin string) *cniWorld {
	t.Helper()
	// The external client gives the node its default route (an iptables node needs a route
	// covering the VIPs for its own connections); no pods are pre-made.
	s := newSandbox(t, Options{External: true, Cgroup: true, BPFFS: true})
	w := &cniWorld{t: t, ctx: context.Background(), mode: mode, s: s}
	// The sandbox pre-makes the pod bridge; on a fresh node svcproxy-cni makes it on the first
	// ADD (with the gateway address and a fixed MAC), so start from no bridge.
	if _, err := run(w.ctx, "ip", "-n", s.Node.Name, "link", "del", BridgeName); err != nil {
		t.Fatal(err)
	}
	w.d = s.NewDaemon(DaemonOptions{Bin: bin, Mode: mode, NodeName: nodeName})
	cfg := BaseConfig(nodeName, mode)
	cfg.IPAM = &IPAM{PodGCGracePeriod: cniGCGrace.String()}
	cfg.Services = []Service{{Name: "web", ClusterIP: cniVIP.String(), Selector: cniSelector,
		Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: cniPodPort}}}}
	if err := w.d.WriteConfig(cfg); err != nil {
		t.Fatal(err)
	}
	w.startDaemon()
	c, err := s.NewCNI(cniBin, "1.1.0", SvcproxyPlugin(w.d.APISocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("remove cnitool cache: %v", err)
		}
	})
	w.cni = c
	return w
}

// with returns a copy of w that reports to t (a subtest).
func (w *cniWorld) with(t *testing.T) *cniWorld {
	c := *w
	c.t = t
	return &c
}

func (w *cniWorld) startDaemon() {
	w.t.Helper()
	if err := w.d.Start(w.ctx); err != nil {
		w.t.Fatal(err)
	}
	st, err := w.d.WaitReady(w.ctx, readyTimeout)
	if err != nil {
		w.t.Fatal(err)
	}
	if st.Mode != w.mode {
		w.t.Fatalf("svcproxy runs mode %q (%s), the test asked for %q", st.Mode, st.ModeReason, w.mode)
	}
}

// add makes a pod namespace (or reuses ns) and runs cnitool add for it with the pod's name and
// labels; it checks the result: one IPv4 address in the pod range (not the gateway) with the
// range's prefix length and the gateway.
func (w *cniWorld) add(name string, labels map[string]string, ns ...*Namespace) (*Pod, netip.Addr) {
	w.t.Helper()
	var pns *Namespace
	if len(ns) > 0 {
		pns = ns[0]
	} else {
		var err error
		if pns, err = w.s.AddNamespace(w.ctx, name); err != nil {
			w.t.Fatal(err)
		}
	}
	res, err := w.cni.Add(w.ctx, pns, CNIArgs{PodName: name, Labels: labels})
	if err != nil {
		w.t.Fatalf("ADD %s: %v", name, err)
	}
	ip, err := PodIPv4(res)
	if err != nil {
		w.t.Fatalf("ADD %s: %v", name, err)
	}
	ones, _ := res.IPs[0].Address.Mask.Size()
	if len(res.IPs) != 1 || !PodPrefix.Contains(ip) || ip == Gateway || ones != PodPrefix.Bits() ||
		res.IPs[0].Gateway.String() != Gateway.String() {
		w.t.Fatalf("ADD %s: IPs %v, want one address in %s other than %s, /%d, gateway %s", name, res.IPs, PodPrefix, Gateway, PodPrefix.Bits(), Gateway)
	}
	return &Pod{Namespace: *pns, PodName: name, IP: ip}, ip
}

// cnitoolOK runs cnitool CMD for pod and fails the test when it fails.
func (w *cniWorld) cnitoolOK(cmd string, p *Pod) {
	w.t.Helper()
	if out, err := w.cni.Cnitool(w.ctx, cmd, &p.Namespace, CNIArgs{PodName: p.PodName}); err != nil {
		w.t.Fatalf("%s of %s: %v (%s)", strings.ToUpper(cmd), p.PodName, err, out)
	}
}

// linkIn reports whether the named link exists in pod's namespace.
func (w *cniWorld) linkIn(p *Pod, link string) bool {
	_, err := run(w.ctx, "ip", "-n", p.Name, "link", "show", link)
	return err == nil
}

func (w *cniWorld) status() *api.Status {
	w.t.Helper()
	st, err := w.d.Status(w.ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	return st
}

// waitStatus polls svcproxy status --json until cond holds (at most cniWait).
func (w *cniWorld) waitStatus(what string, cond func(*api.Status) bool) *api.Status {
	w.t.Helper()
	deadline := time.Now().Add(cniWait)
	var last *api.Status
	for {
		st, err := w.d.Status(w.ctx)
		if err == nil {
			last = st
			if cond(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(last, "", "  ")
			w.t.Fatalf("status: not %s within %v (last error %v); last status:\n%s", what, cniWait, err, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *cniWorld) probe(from *Namespace, count int) ProbeResult {
	w.t.Helper()
	res, err := w.s.Probe(w.ctx, from, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(cniVIP, webPort), Count: count, MaxFailures: 10})
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

// requireSpread checks that cniConns connections through the VIP were all answered, each of
// pods got at least 15% of them, and no other pod answered.
func (w *cniWorld) requireSpread(what string, from *Namespace, pods ...*Pod) {
	w.t.Helper()
	res := w.probe(from, cniConns)
	if res.Failed() != 0 || res.Skipped != 0 {
		w.t.Errorf("%s: %d of %d connections failed: %v", what, res.Failed(), res.Total(), res)
	}
	min := cniConns * 15 / 100
	want := map[string]bool{}
	for _, p := range pods {
		want[p.PodName] = true
		if res.Replies[p.PodName] < min {
			w.t.Errorf("%s: %s answered %d of %d connections, want at least %d: %v", what, p.PodName, res.Replies[p.PodName], res.Total(), min, res)
		}
	}
	for name, n := range res.Replies {
		if !want[name] {
			w.t.Errorf("%s: %s answered %d connections but is not an endpoint: %v", what, name, n, res)
		}
	}
	w.t.Logf("%s: %v", what, res)
}

// requireOnly checks that 100 connections through the VIP were all answered by p.
func (w *cniWorld) requireOnly(what string, from *Namespace, p *Pod) {
	w.t.Helper()
	res := w.probe(from, 100)
	if res.Replies[p.PodName] != 100 || res.Total() != 100 {
		w.t.Errorf("%s: want all 100 connections answered by %s, got %v; %s", what, p.PodName, res, w.l2(from, p))
	}
}

// waitOnly waits (at most cniWait) until a batch of 20 connections through the VIP is answered
// by p alone, then requires that of 100 more.
func (w *cniWorld) waitOnly(what string, from *Namespace, p *Pod) {
	w.t.Helper()
	deadline := time.Now().Add(cniWait)
	for {
		res, err := w.s.Probe(w.ctx, from, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(cniVIP, webPort), Count: 20, Timeout: time.Second, MaxFailures: 4})
		if err != nil {
			w.t.Fatal(err)
		}
		if res.Replies[p.PodName] == 20 {
			break
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: the VIP does not reach %s alone within %v: %v", what, p.PodName, cniWait, res)
		}
	}
	w.requireOnly(what, from, p)
}

// l2 describes, for failure messages, the MAC of p's eth0 and what the neighbour tables of
// from and of the node hold for p's address, naming entries that point elsewhere (outdated: a
// re-created pod's new MAC was not announced).
func (w *cniWorld) l2(from *Namespace, p *Pod) string {
	var b strings.Builder
	out, err := run(w.ctx, "ip", "-n", p.Name, "-br", "link", "show", "eth0")
	var mac string
	if f := strings.Fields(string(out)); err == nil && len(f) >= 3 {
		mac = f[2]
	}
	fmt.Fprintf(&b, "%s eth0 has MAC %q (%v)", p.PodName, mac, err)
	for _, ns := range []*Namespace{from, w.s.Node} {
		out, err := run(w.ctx, "ip", "-n", ns.Name, "neigh", "show", p.IP.String())
		entry := strings.TrimSpace(string(out))
		fmt.Fprintf(&b, "; neighbour entry for %s in %s: %q (%v)", p.IP, ns.Name, entry, err)
		if f := strings.Fields(entry); mac != "" && len(f) > 4 && f[3] == "lladdr" && f[4] != mac {
			fmt.Fprintf(&b, " OUTDATED: points to %s, not to the pod's MAC %s", f[4], mac)
		}
	}
	return b.String()
}

// podRange is the status's pod IPAM range (nil when absent).
func podRange(st *api.Status) *api.Range {
	for i := range st.IPAM {
		if st.IPAM[i].Kind == "pod" && st.IPAM[i].Range == PodPrefix.String() {
			return &st.IPAM[i]
		}
	}
	return nil
}

// podUsed is the number of used addresses of the pod range, -1 when status has none.
func podUsed(st *api.Status) int {
	if r := podRange(st); r != nil {
		return int(r.Used)
	}
	return -1
}

// cniEndpoints returns the sorted endpoint addresses (without port) of the service's port,
// an endpoint not active or on another port marked so, or nil when the service is not in the
// status.
func cniEndpoints(st *api.Status) []string {
	for _, s := range st.Services {
		if s.Name != "web" || len(s.Ports) != 1 {
			continue
		}
		var out []string
		for _, e := range s.Ports[0].Endpoints {
			ap, err := netip.ParseAddrPort(e.Address)
			switch {
			case err != nil || ap.Port() != cniPodPort:
				out = append(out, fmt.Sprintf("bad endpoint %q", e.Address))
			case e.State != "active":
				out = append(out, fmt.Sprintf("%s (%s)", ap.Addr(), e.State))
			default:
				out = append(out, ap.Addr().String())
			}
		}
		sort.Strings(out)
		return out
	}
	return nil
}

func sortedAddrs(addrs ...netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	sort.Strings(out)
	return out
}
