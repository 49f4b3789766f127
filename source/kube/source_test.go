package kube

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func ptr[T any](v T) *T { return &v }

func node(name, ip, zone string, podCIDRs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	if zone != "" {
		n.Labels[corev1.LabelTopologyZone] = zone
	}
	n.Spec.PodCIDRs = podCIDRs
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
	}
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"big/image:1"}, SizeBytes: 1 << 30}}
	return n
}

func service(ns, name, ip string, labels map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports},
	}
}

func slice(ns, name, svc string, port int32, trigger string, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(port)}},
		Endpoints:   eps,
	}
	if trigger != "" {
		s.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger}
	}
	return s
}

func ep(ip, nodeName string, ready bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{ip},
		NodeName:   ptr(nodeName),
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready), Serving: ptr(ready), Terminating: ptr(false)},
	}
}

func pod(ns, name, nodeName, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// harness runs a Source over a fake clientset and collects its States.
type fakeRun struct {
	t       *testing.T
	client  *fake.Clientset
	src     *Source
	states  chan *model.State
	podsHit atomic.Int32
	watches chan string
	done    chan error
	cancel  context.CancelFunc
}

func startFake(t *testing.T, opts Options, objs ...runtime.Object) *fakeRun {
	t.Helper()
	client := fake.NewClientset(objs...)
	r := &fakeRun{t: t, client: client, states: make(chan *model.State, 100), watches: make(chan string, 10), done: make(chan error, 1)}
	// The fake's watch does not replay events made between list and watch: changes are made
	// only after every informer's watch is open.
	client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		r.watches <- a.GetResource().Resource
		return false, nil, nil
	})
	if opts.NodeName == "" {
		opts.NodeName = "node1"
	}
	opts.PodsChanged = func() { r.podsHit.Add(1) }
	r.src = New(client, opts)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.src.Run(ctx, func(st *model.State) { r.states <- st }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	seen := map[string]bool{}
	for len(seen) < 4 {
		select {
		case res := <-r.watches:
			seen[res] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("informers opened watches on %v only", seen)
		}
	}
	return r
}

func (r *fakeRun) next() *model.State {
	r.t.Helper()
	select {
	case st := <-r.states:
		return st
	case <-time.After(10 * time.Second):
		r.t.Fatal("no State delivered")
		return nil
	}
}

func TestSourceBuildsStateFromObjects(t *testing.T) {
	ctx := context.Background()
	r := startFake(t, Options{
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/16")},
	},
		node("node1", "172.31.0.2", "z1", "10.244.1.0/24"),
		node("node2", "172.31.0.3", "z2", "10.244.2.0/24"),
		node("node3", "", "z2", "10.244.3.0/24"), // no address: cannot be routed to
		service("default", "web", "10.96.0.10", nil, corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}),
		slice("default", "web-1", "web", 8080, "", ep("10.244.1.5", "node1", true), ep("10.244.2.5", "node2", false)),
		service("default", "other-proxy", "10.96.0.11", map[string]string{"service.kubernetes.io/service-proxy-name": "x"},
			corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}),
		service("default", "headless", "None", nil, corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}),
		pod("default", "web-a", "node1", "10.244.1.5", map[string]string{"app": "web"}),
		pod("default", "web-b", "node2", "10.244.2.5", map[string]string{"app": "web"}),
	)
	st := r.next()
	if st.NodeName != "node1" || st.Zone != "z1" {
		t.Errorf("node %q zone %q, want node1 z1", st.NodeName, st.Zone)
	}
	if len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("PodCIDRs %v, want the Node's 10.244.1.0/24", st.PodCIDRs)
	}
	if len(st.ClusterCIDRs) != 1 || len(st.ServiceCIDRs) != 1 {
		t.Errorf("settings not copied: cluster %v service %v", st.ClusterCIDRs, st.ServiceCIDRs)
	}
	wantNodes := []model.Node{{Name: "node2", Address: netip.MustParseAddr("172.31.0.3"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}, Zone: "z2"}}
	if len(st.Nodes) != 1 || st.Nodes[0].Name != "node2" || st.Nodes[0].Address != wantNodes[0].Address ||
		st.Nodes[0].PodCIDRs[0] != wantNodes[0].PodCIDRs[0] || st.Nodes[0].Zone != "z2" {
		t.Errorf("Nodes %+v, want %+v", st.Nodes, wantNodes)
	}
	if len(st.Services) != 1 || st.Services[0].Key != (model.ServiceKey{Namespace: "default", Name: "web"}) {
		t.Fatalf("services %v, want only default/web", keys(st))
	}
	web := st.Services[0]
	if len(web.Ports) != 1 || len(web.Ports[0].Endpoints) != 2 {
		t.Fatalf("web ports %+v, want one port with 2 endpoints", web.Ports)
	}
	if e := web.Ports[0].Endpoints[0]; e.IP != netip.MustParseAddr("10.244.1.5") || e.Port != 8080 || !e.Ready {
		t.Errorf("first endpoint %+v", e)
	}
	if st.TriggerTimes != nil {
		t.Errorf("first state has trigger times %v", st.TriggerTimes)
	}
	if got := r.src.State(); got != st {
		t.Errorf("State() is not the delivered state")
	}

	// Pods of this node only, with labels and IPs; PodsChanged was called.
	pods := r.src.Pods()
	if len(pods) != 1 || pods[0].Name != "web-a" || pods[0].Labels["app"] != "web" || !pods[0].Ready ||
		len(pods[0].IPs) != 1 || pods[0].IPs[0] != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("Pods() = %+v, want web-a of node1", pods)
	}
	if _, ok := r.src.Pod("default", "web-b"); ok {
		t.Errorf("Pod(web-b) of another node was returned")
	}
	// PodsChanged follows the delivery of the first State.
	waitFor(t, func() bool { return r.podsHit.Load() > 0 })

	// A change that alters nothing the proxy uses (a node heartbeat) delivers no State: the
	// next State is the one of the following real change.
	n2, _ := r.client.CoreV1().Nodes().Get(ctx, "node2", metav1.GetOptions{})
	n2.Annotations = map[string]string{"heartbeat": "1"}
	if _, err := r.client.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	trig := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sl := slice("default", "web-1", "web", 8080, trig.Format(time.RFC3339), ep("10.244.1.5", "node1", true), ep("10.244.2.5", "node2", true))
	if _, err := r.client.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	st2 := r.next()
	web2 := st2.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	if web2 == nil || !web2.Ports[0].Endpoints[1].Ready {
		t.Fatalf("after the slice update web is %+v, want both endpoints ready", web2)
	}
	if got := st2.TriggerTimes[web2.Key]; !got.Equal(trig) {
		t.Errorf("trigger time %v, want %v", got, trig)
	}
	if web.Ports[0].Endpoints[1].Ready {
		t.Errorf("the first State was modified after delivery")
	}

	// A second service: the unchanged one is shared, not copied.
	api := service("default", "api", "10.96.0.12", nil, corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80})
	if _, err := r.client.CoreV1().Services("default").Create(ctx, api, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st3 := r.next()
	if got := keys(st3); len(got) != 2 || got[0] != "default/api" || got[1] != "default/web" {
		t.Fatalf("services %v, want [default/api default/web]", got)
	}
	if st3.Service(web2.Key) != web2 {
		t.Errorf("unchanged service web was rebuilt")
	}
	if st3.TriggerTimes != nil {
		t.Errorf("trigger times %v for a change without annotation", st3.TriggerTimes)
	}

	// A node joining the cluster.
	if _, err := r.client.CoreV1().Nodes().Create(ctx, node("node4", "172.31.0.5", "", "10.244.4.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st4 := r.next()
	if len(st4.Nodes) != 2 || st4.Nodes[1].Name != "node4" {
		t.Fatalf("Nodes %+v, want node2 and node4", st4.Nodes)
	}

	// Deletion of the service.
	if err := r.client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	st5 := r.next()
	if got := keys(st5); len(got) != 1 || got[0] != "default/api" {
		t.Fatalf("services after delete %v", got)
	}

	// The pod of this node is being deleted: not ready.
	before := r.podsHit.Load()
	p := pod("default", "web-a", "node1", "10.244.1.5", map[string]string{"app": "web", "v": "2"})
	p.Status.Phase = corev1.PodSucceeded
	if _, err := r.client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return r.podsHit.Load() > before })
	if got, ok := r.src.Pod("default", "web-a"); !ok || got.Ready || got.Labels["v"] != "2" {
		t.Errorf("Pod(web-a) = %+v, %v; want the updated, not ready pod", got, ok)
	}
}

func TestSourceNodeCacheIsTrimmed(t *testing.T) {
	r := startFake(t, Options{}, node("node1", "172.31.0.2", "", "10.244.1.0/24"))
	r.next()
	obj, ok, err := r.src.nodes.GetStore().GetByKey("node1")
	if err != nil || !ok {
		t.Fatalf("node1 not cached: %v", err)
	}
	if n := obj.(*corev1.Node); len(n.Status.Images) != 0 {
		t.Errorf("cached node keeps %d images", len(n.Status.Images))
	}
}

func TestSourcePodCIDRsOverride(t *testing.T) {
	want := netip.MustParsePrefix("10.244.9.0/24")
	r := startFake(t, Options{PodCIDRs: []netip.Prefix{want}}, node("node1", "172.31.0.2", "", "10.244.1.0/24"))
	if st := r.next(); len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != want {
		t.Errorf("PodCIDRs %v, want the configured %v", st.PodCIDRs, want)
	}
}

// fakeClock is a settable clock for staleness tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

func TestSourceStaleness(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// A probe interval far beyond the test keeps the /readyz probe out of it.
	opts := Options{Now: clk.Now, StaleAfter: 30 * time.Second, ProbeInterval: time.Hour}
	r := startFake(t, opts, node("node1", "172.31.0.2", "", "10.244.1.0/24"))
	r.next()
	if !r.src.Synced() {
		t.Fatal("not Synced after the first State")
	}
	if r.src.Stale() {
		t.Fatal("Stale right after sync")
	}
	if !r.src.LastContact().Equal(clk.Now()) {
		t.Errorf("LastContact %v, want %v", r.src.LastContact(), clk.Now())
	}
	clk.Add(31 * time.Second)
	if !r.src.Stale() {
		t.Fatal("not Stale 31s after the last contact")
	}
	// Any event counts as contact.
	if _, err := r.client.CoreV1().Nodes().Create(context.Background(), node("node2", "172.31.0.3", "", "10.244.2.0/24"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.next()
	if r.src.Stale() {
		t.Fatal("still Stale after an event")
	}
}

func TestSourceNotSynced(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	src := New(client, Options{NodeName: "node1", InitialSyncTimeout: 300 * time.Millisecond})
	err := src.Run(context.Background(), func(*model.State) { t.Error("a State was delivered") })
	if !errors.Is(err, ErrNotSynced) {
		t.Fatalf("Run = %v, want ErrNotSynced", err)
	}
	if src.Synced() || !src.Stale() || src.State() != nil {
		t.Errorf("Synced %v Stale %v State %v after a failed sync", src.Synced(), src.Stale(), src.State())
	}
	if src.LastError() == nil {
		t.Errorf("LastError is nil after failed lists")
	}
	if err := src.Run(context.Background(), nil); err == nil {
		t.Errorf("second Run succeeded")
	}
}

func TestRESTConfigFromFlags(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := RESTConfigFromFlags(""); !errors.Is(err, ErrNoClusterConfig) {
		t.Errorf("no kubeconfig, not in a pod: %v, want ErrNoClusterConfig", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://172.31.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: abc}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := RESTConfigFromFlags(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://172.31.0.1:6443" || cfg.BearerToken != "abc" || cfg.UserAgent != UserAgent {
		t.Errorf("config host %q token %q agent %q", cfg.Host, cfg.BearerToken, cfg.UserAgent)
	}
	if _, err := ClientFromFlags(path); err != nil {
		t.Errorf("ClientFromFlags: %v", err)
	}
	if _, err := RESTConfigFromFlags(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Errorf("a missing kubeconfig was accepted")
	}
	// In a pod without the service-account files: in-cluster config is tried, and fails.
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
		t.Skip("running in a pod")
	}
	if _, err := RESTConfigFromFlags(""); err == nil || errors.Is(err, ErrNoClusterConfig) {
		t.Errorf("in-cluster without token: %v, want an in-cluster error", err)
	}
}

func keys(st *model.State) []string {
	var out []string
	for _, s := range st.Services {
		out = append(out, s.Key.String())
	}
	return out
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSourceTriggerTimes(t *testing.T) {
	ctx := context.Background()
	r := startFake(t, Options{}, node("node1", "172.31.0.2", "", "10.244.1.0/24"))
	r.next()
	key := model.ServiceKey{Namespace: "default", Name: "a"}
	t1 := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	svc := service("default", "a", "10.96.0.20", nil, corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80})
	svc.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: t1.Format(time.RFC3339)}
	if _, err := r.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := r.next(); !st.TriggerTimes[key].Equal(t1) {
		t.Errorf("after create: trigger times %v, want %v", st.TriggerTimes, t1)
	}
	t2 := t1.Add(time.Minute)
	sl := slice("default", "a-1", "a", 8080, t2.Format(time.RFC3339), ep("10.244.1.5", "node1", true))
	if _, err := r.client.DiscoveryV1().EndpointSlices("default").Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := r.next(); !st.TriggerTimes[key].Equal(t2) {
		t.Errorf("after slice create: trigger times %v, want %v", st.TriggerTimes, t2)
	}
	// Same annotation, other endpoints: the change has no new trigger time.
	sl = slice("default", "a-1", "a", 8080, t2.Format(time.RFC3339), ep("10.244.1.6", "node1", true))
	if _, err := r.client.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := r.next(); st.TriggerTimes != nil {
		t.Errorf("unchanged annotation: trigger times %v, want none", st.TriggerTimes)
	}
	// A deletion carries the object's old annotation: not a trigger time.
	if err := r.client.CoreV1().Services("default").Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := r.next(); st.Service(key) != nil || st.TriggerTimes != nil {
		t.Errorf("after delete: service %v trigger times %v", st.Service(key), st.TriggerTimes)
	}
}

// TestSourceNodeEligible: as kube-proxy's /healthz (KEP-3836), this node is not eligible for
// load-balancer traffic while its Node is being deleted or carries the cluster autoscaler's
// ToBeDeletedByClusterAutoscaler taint, nor once its Node is gone. A node whose Node was
// never seen (registered later, as in the CNI-before-pod-range flow) stays eligible.
func TestSourceNodeEligible(t *testing.T) {
	r := startFake(t, Options{}, node("node1", "172.31.0.2", "", "10.244.1.0/24"))
	r.next()
	ctx := context.Background()
	eventually := func(what string, want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ok, why := r.src.NodeEligible()
			if ok == want && (ok || why != "") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: eligible=%v %q, want %v", what, ok, why, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	eventually("a plain node", true)
	update := func(f func(n *corev1.Node)) {
		t.Helper()
		n, err := r.client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f(n)
		if _, err := r.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: "other", Effect: corev1.TaintEffectNoSchedule}}
	})
	time.Sleep(50 * time.Millisecond)
	eventually("another taint", true)
	update(func(n *corev1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "ToBeDeletedByClusterAutoscaler", Value: "1700000000", Effect: corev1.TaintEffectNoSchedule})
	})
	eventually("tainted ToBeDeletedByClusterAutoscaler", false)
	update(func(n *corev1.Node) { n.Spec.Taints = nil })
	eventually("taint removed", true)
	update(func(n *corev1.Node) {
		now := metav1.Now()
		n.DeletionTimestamp = &now
		n.Finalizers = []string{"example.com/hold"}
	})
	eventually("being deleted", false)
	update(func(n *corev1.Node) { n.DeletionTimestamp = nil })
	eventually("deletion cleared", true)
	if err := r.client.CoreV1().Nodes().Delete(ctx, "node1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually("deleted", false)
}

func TestSourceNodeEligibleBeforeRegistration(t *testing.T) {
	r := startFake(t, Options{}, node("node2", "172.31.0.3", "", "10.244.2.0/24"))
	r.next()
	if ok, why := r.src.NodeEligible(); !ok {
		t.Errorf("a node not registered yet: eligible=%v %q, want true", ok, why)
	}
}

// PodIdentities and PodUID give pod IP GC and allocation the pods' UIDs.
func TestSourcePodUIDs(t *testing.T) {
	live := pod("ns", "web", "node1", "10.244.1.5", nil)
	live.UID = "uid-web"
	gone := pod("ns", "old", "node1", "10.244.1.6", nil)
	gone.UID = "uid-old"
	gone.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	other := pod("ns", "else", "node2", "10.244.2.5", nil)
	other.UID = "uid-else"
	r := startFake(t, Options{}, live, gone, other)
	r.next()
	ids := r.src.PodIdentities()
	slices.SortFunc(ids, func(a, b PodIdentity) int { return strings.Compare(a.Name, b.Name) })
	if len(ids) != 2 || ids[0] != (PodIdentity{"ns", "old", "uid-old"}) || ids[1] != (PodIdentity{"ns", "web", "uid-web"}) {
		t.Fatalf("PodIdentities = %+v", ids)
	}
	if u := r.src.PodUID("ns", "web"); u != "uid-web" {
		t.Fatalf("PodUID(web) = %q", u)
	}
	for _, n := range []string{"old", "else", "nope"} {
		if u := r.src.PodUID("ns", n); u != "" {
			t.Fatalf("PodUID(%s) = %q, want empty", n, u)
		}
	}
}
