package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/source/kube"
	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

func ptr[T any](v T) *T { return &v }

const waitTimeout = 30 * time.Second

// runSource runs a kube.Source for node on client until the test ends, and records every
// State it delivers.
type sourceRun struct {
	src    *kube.Source
	mu     sync.Mutex
	states []*model.State
}

func runSource(t *testing.T, client kubernetes.Interface, opts kube.Options) *sourceRun {
	t.Helper()
	r := &sourceRun{}
	r.src = kube.New(client, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.src.Run(ctx, func(st *model.State) {
			r.mu.Lock()
			r.states = append(r.states, st)
			r.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("source Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("source Run did not return after cancel")
		}
	})
	return r
}

func (r *sourceRun) last() *model.State {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.states) == 0 {
		return nil
	}
	return r.states[len(r.states)-1]
}

func (r *sourceRun) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.states)
}

// waitState waits until the last delivered State satisfies cond (which returns nil then) and
// returns that State.
func (r *sourceRun) waitState(t *testing.T, what string, cond func(*model.State) error) *model.State {
	t.Helper()
	var st *model.State
	harness.Eventually(t, waitTimeout, what, func() error {
		st = r.last()
		if st == nil {
			return fmt.Errorf("no State yet")
		}
		return cond(st)
	})
	return st
}

func svcKey(ns, name string) model.ServiceKey { return model.ServiceKey{Namespace: ns, Name: name} }

func createNamespace(t *testing.T, ctx context.Context, c kubernetes.Interface, name string) {
	t.Helper()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func newService(ns, name string, typ corev1.ServiceType, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			Type:     typ,
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(8080)}},
		},
	}
}

type testEP struct {
	ip, node    string
	ready, term bool
}

func newSlice(ns, name, svc, trigger string, eps ...testEP) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc,
			discoveryv1.LabelManagedBy:   "svcproxy-e2e",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Protocol: ptr(corev1.ProtocolTCP), Port: ptr(int32(8080))}},
	}
	if trigger != "" {
		s.Annotations = map[string]string{corev1.EndpointsLastChangeTriggerTime: trigger}
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{e.ip},
			NodeName:  ptr(e.node),
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(e.ready), Serving: ptr(e.ready || e.term), Terminating: ptr(e.term),
			},
		})
	}
	return s
}

func newPod(ns, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/none:1"}},
		},
	}
}

func registerNodes(t *testing.T, ctx context.Context, c *harness.Cluster) {
	t.Helper()
	for _, n := range []struct {
		name, ip, zone, cidr string
	}{
		{"node1", "172.31.0.2", "z1", "10.244.1.0/24"},
		{"node2", "172.31.0.3", "z2", "10.244.2.0/24"},
	} {
		if _, err := c.RegisterNode(ctx, n.name, netip.MustParseAddr(n.ip), n.zone, n.cidr); err != nil {
			t.Fatal(err)
		}
	}
}

func endpointsOf(st *model.State, k model.ServiceKey) ([]model.Endpoint, error) {
	s := st.Service(k)
	if s == nil {
		return nil, fmt.Errorf("service %s absent (have %d services)", k, len(st.Services))
	}
	if len(s.Ports) != 1 {
		return nil, fmt.Errorf("service %s has %d ports", k, len(s.Ports))
	}
	return s.Ports[0].Endpoints, nil
}

// TestKubeSourceAgainstAPIServer drives the cluster-mode source with objects made through a
// real kube-apiserver: allocated VIPs and node ports, EndpointSlice updates with trigger
// times, deletions, services svcproxy must ignore, nodes, and the server-side pod field
// selector.
func TestKubeSourceAgainstAPIServer(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	api := c.Client
	registerNodes(t, ctx, c)
	createNamespace(t, ctx, api, "e2e")

	web, err := api.CoreV1().Services("e2e").Create(ctx, newService("e2e", "web", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	np, err := api.CoreV1().Services("e2e").Create(ctx, newService("e2e", "np", corev1.ServiceTypeNodePort, 81), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	headless := newService("e2e", "headless", corev1.ServiceTypeClusterIP, 82)
	headless.Spec.ClusterIP = corev1.ClusterIPNone
	if _, err := api.CoreV1().Services("e2e").Create(ctx, headless, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "e2e", Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.invalid"}}
	if _, err := api.CoreV1().Services("e2e").Create(ctx, ext, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	other := newService("e2e", "other-proxy", corev1.ServiceTypeClusterIP, 83)
	other.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "someone-else"}
	if _, err := api.CoreV1().Services("e2e").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.DiscoveryV1().EndpointSlices("e2e").Create(ctx,
		newSlice("e2e", "web-a", "web", "", testEP{"10.244.1.10", "node1", true, false}, testEP{"10.244.2.10", "node2", true, false}),
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{
		newPod("e2e", "web-1", "node1", map[string]string{"app": "web"}),
		newPod("e2e", "web-2", "node2", map[string]string{"app": "web"}),
	} {
		if _, err := api.CoreV1().Pods("e2e").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	r := runSource(t, api, kube.Options{
		NodeName:     "node1",
		ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix(harness.ClusterCIDR)},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix(harness.ServiceCIDR)},
	})
	st := r.waitState(t, "first state with e2e/web", func(st *model.State) error {
		eps, err := endpointsOf(st, svcKey("e2e", "web"))
		if err != nil {
			return err
		}
		if len(eps) != 2 {
			return fmt.Errorf("web has %d endpoints", len(eps))
		}
		return nil
	})
	if !r.src.Synced() || r.src.Stale() {
		t.Errorf("Synced %v Stale %v after the first state", r.src.Synced(), r.src.Stale())
	}
	if st.NodeName != "node1" || st.Zone != "z1" || len(st.PodCIDRs) != 1 || st.PodCIDRs[0] != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("node settings: name %q zone %q podCIDRs %v", st.NodeName, st.Zone, st.PodCIDRs)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].Name != "node2" || st.Nodes[0].Address != netip.MustParseAddr("172.31.0.3") ||
		len(st.Nodes[0].PodCIDRs) != 1 || st.Nodes[0].PodCIDRs[0] != netip.MustParsePrefix("10.244.2.0/24") {
		t.Errorf("Nodes %+v, want node2 at 172.31.0.3 with 10.244.2.0/24", st.Nodes)
	}
	var keys []string
	for _, s := range st.Services {
		keys = append(keys, s.Key.String())
	}
	if got, want := strings.Join(keys, " "), "default/kubernetes e2e/np e2e/web"; got != want {
		t.Errorf("services %q, want %q (headless, ExternalName and other-proxy ignored)", got, want)
	}
	ws := st.Service(svcKey("e2e", "web"))
	if len(ws.ClusterIPs) != 1 || ws.ClusterIPs[0].String() != web.Spec.ClusterIP {
		t.Errorf("web VIP %v, API server allocated %s", ws.ClusterIPs, web.Spec.ClusterIP)
	}
	if !netip.MustParsePrefix(harness.ServiceCIDR).Contains(ws.ClusterIPs[0]) {
		t.Errorf("web VIP %v outside %s", ws.ClusterIPs, harness.ServiceCIDR)
	}
	if e := ws.Ports[0]; e.Port != 80 || e.Endpoints[0].Port != 8080 || e.Endpoints[0].NodeName != "node1" {
		t.Errorf("web port %+v", e)
	}
	nps := st.Service(svcKey("e2e", "np"))
	if nps.Type != model.NodePort || int32(nps.Ports[0].NodePort) != np.Spec.Ports[0].NodePort || nps.Ports[0].NodePort < 30000 {
		t.Errorf("np: type %s nodePort %d, API server allocated %d", nps.Type, nps.Ports[0].NodePort, np.Spec.Ports[0].NodePort)
	}

	// Pods: the API server's field selector hands this node's pods only.
	harness.Eventually(t, waitTimeout, "pods of node1", func() error {
		pods := r.src.Pods()
		if len(pods) != 1 || pods[0].Name != "web-1" || pods[0].Labels["app"] != "web" || !pods[0].Ready {
			return fmt.Errorf("Pods() = %+v", pods)
		}
		return nil
	})

	// An endpoint starts terminating; the slice carries the trigger time.
	trig := time.Now().UTC().Truncate(time.Second)
	upd := newSlice("e2e", "web-a", "web", trig.Format(time.RFC3339),
		testEP{"10.244.1.10", "node1", true, false}, testEP{"10.244.2.10", "node2", false, true})
	cur, err := api.DiscoveryV1().EndpointSlices("e2e").Get(ctx, "web-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	upd.ResourceVersion = cur.ResourceVersion
	if _, err := api.DiscoveryV1().EndpointSlices("e2e").Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	st = r.waitState(t, "terminating endpoint", func(st *model.State) error {
		eps, err := endpointsOf(st, svcKey("e2e", "web"))
		if err != nil {
			return err
		}
		if len(eps) != 2 || !eps[1].Terminating || eps[1].Ready || !eps[1].Serving {
			return fmt.Errorf("endpoints %+v", eps)
		}
		return nil
	})
	if got := st.TriggerTimes[svcKey("e2e", "web")]; !got.Equal(trig) {
		t.Errorf("trigger time %v, want %v (all: %v)", got, trig, st.TriggerTimes)
	}

	// A second slice of the same service is merged in.
	if _, err := api.DiscoveryV1().EndpointSlices("e2e").Create(ctx,
		newSlice("e2e", "web-b", "web", "", testEP{"10.244.1.11", "node1", true, false}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitState(t, "merged slices", func(st *model.State) error {
		eps, err := endpointsOf(st, svcKey("e2e", "web"))
		if err != nil {
			return err
		}
		if len(eps) != 3 {
			return fmt.Errorf("%d endpoints, want 3", len(eps))
		}
		return nil
	})

	// A node joins; the service is deleted.
	if _, err := c.RegisterNode(ctx, "node3", netip.MustParseAddr("172.31.0.4"), "z1", "10.244.3.0/24"); err != nil {
		t.Fatal(err)
	}
	if err := api.CoreV1().Services("e2e").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	r.waitState(t, "node3 joined and web deleted", func(st *model.State) error {
		if st.Service(svcKey("e2e", "web")) != nil {
			return fmt.Errorf("web still present")
		}
		if len(st.Nodes) != 2 || st.Nodes[1].Name != "node3" {
			return fmt.Errorf("nodes %+v", st.Nodes)
		}
		return nil
	})
}

// TestKubeSourceAPIOutage kills kube-apiserver under a running source: the view turns stale,
// the last State stays (no State without the services is delivered), and after the restart the
// source is fresh again and sees new changes.
func TestKubeSourceAPIOutage(t *testing.T) {
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	registerNodes(t, ctx, c)
	createNamespace(t, ctx, c.Client, "e2e")
	if _, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "web", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r := runSource(t, c.Client, kube.Options{NodeName: "node1", ProbeInterval: 200 * time.Millisecond, StaleAfter: time.Second})
	r.waitState(t, "web", func(st *model.State) error {
		if st.Service(svcKey("e2e", "web")) == nil {
			return fmt.Errorf("web absent")
		}
		return nil
	})
	before := r.count()

	start := time.Now()
	c.KillAPIServer()
	harness.Eventually(t, waitTimeout, "source stale", func() error {
		if !r.src.Stale() {
			return fmt.Errorf("not stale; last contact %v", r.src.LastContact())
		}
		return nil
	})
	t.Logf("stale %s after kube-apiserver was killed", time.Since(start).Round(time.Millisecond))
	if r.src.LastError() == nil {
		t.Error("LastError is nil during the outage")
	}
	if st := r.last(); st.Service(svcKey("e2e", "web")) == nil {
		t.Error("the last State lost web during the outage")
	}
	if n := r.count(); n != before {
		t.Errorf("%d States delivered during the outage", n-before)
	}

	start = time.Now()
	c.StartAPIServer()
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready again in %s", time.Since(start).Round(time.Millisecond))
	start = time.Now()
	harness.Eventually(t, waitTimeout, "source fresh again", func() error {
		if r.src.Stale() {
			return fmt.Errorf("still stale; last error %v", r.src.LastError())
		}
		return nil
	})
	t.Logf("fresh %s after kube-apiserver was ready", time.Since(start).Round(time.Millisecond))
	if _, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "api", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	r.waitState(t, "api after the restart", func(st *model.State) error {
		if st.Service(svcKey("e2e", "api")) == nil || st.Service(svcKey("e2e", "web")) == nil {
			return fmt.Errorf("have %d services", len(st.Services))
		}
		return nil
	})
	t.Logf("new service seen %s after its creation", time.Since(start).Round(time.Millisecond))
}

// TestRBACSufficesForSource applies the shipped ServiceAccount, ClusterRole and binding, and
// runs the source with a token of that ServiceAccount: it syncs and sees every resource, and
// the role grants nothing beyond that.
func TestRBACSufficesForSource(t *testing.T) {
	ms := loadManifests(t)
	c := harness.StartCluster(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, mapper := newApplier(t, c)
	var sa *corev1.ServiceAccount
	for _, m := range ms {
		if m.file != "rbac.yaml" {
			continue
		}
		if err := apply(ctx, dyn, mapper, m, false); err != nil {
			t.Fatal(err)
		}
		if s, ok := m.obj.(*corev1.ServiceAccount); ok {
			sa = s
		}
	}
	if sa == nil {
		t.Fatal("rbac.yaml has no ServiceAccount")
	}
	registerNodes(t, ctx, c)
	createNamespace(t, ctx, c.Client, "e2e")
	if _, err := c.Client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "web", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.DiscoveryV1().EndpointSlices("e2e").Create(ctx,
		newSlice("e2e", "web-a", "web", "", testEP{"10.244.1.10", "node1", true, false}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Pods("e2e").Create(ctx, newPod("e2e", "web-1", "node1", map[string]string{"app": "web"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	token, err := c.ServiceAccountToken(ctx, sa.Namespace, sa.Name)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(c.RESTConfig(token))
	if err != nil {
		t.Fatal(err)
	}

	r := runSource(t, client, kube.Options{NodeName: "node1", InitialSyncTimeout: waitTimeout})
	r.waitState(t, "web with its endpoint, as the ServiceAccount", func(st *model.State) error {
		eps, err := endpointsOf(st, svcKey("e2e", "web"))
		if err != nil {
			return err
		}
		if len(eps) != 1 || len(st.Nodes) != 1 || st.Zone != "z1" {
			return fmt.Errorf("endpoints %v nodes %v zone %q", eps, st.Nodes, st.Zone)
		}
		return nil
	})
	harness.Eventually(t, waitTimeout, "pods as the ServiceAccount", func() error {
		if p := r.src.Pods(); len(p) != 1 {
			return fmt.Errorf("Pods() = %+v", p)
		}
		return nil
	})
	// The probe endpoint is readable with the role (system:public-info-viewer).
	if _, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		t.Errorf("GET /readyz as the ServiceAccount: %v", err)
	}

	// Nothing more: no get, no writes, no secrets.
	denied := map[string]error{}
	_, denied["get service"] = client.CoreV1().Services("e2e").Get(ctx, "web", metav1.GetOptions{})
	_, denied["create service"] = client.CoreV1().Services("e2e").Create(ctx, newService("e2e", "x", corev1.ServiceTypeClusterIP, 80), metav1.CreateOptions{})
	_, denied["list secrets"] = client.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	denied["delete pod"] = client.CoreV1().Pods("e2e").Delete(ctx, "web-1", metav1.DeleteOptions{})
	for what, err := range denied {
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s as the ServiceAccount: %v, want Forbidden", what, err)
		}
	}
	// Events may be recorded.
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: "default", Name: "svcproxy-e2e.1"},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: "node1"},
		Reason:         "Test", Message: "rbac", Type: corev1.EventTypeNormal,
		Source: corev1.EventSource{Component: "svcproxy"},
	}
	if _, err := client.CoreV1().Events("default").Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Errorf("creating an event as the ServiceAccount: %v", err)
	}
}
