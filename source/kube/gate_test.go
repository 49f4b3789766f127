package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

var errConnRefused = &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

func TestUnreachable(t *testing.T) {
	gr := schema.GroupResource{Resource: "services"}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errConnRefused, true},
		{fmt.Errorf("Get \"https://172.31.0.1:6443\": %w", errConnRefused), true},
		{errors.New("unexpected EOF"), true},
		{apierrors.NewServiceUnavailable("no endpoints"), true},
		{apierrors.NewGenericServerResponse(502, "get", gr, "", "bad gateway", 0, true), true},
		{apierrors.NewResourceExpired("too old resource version"), false},
		{apierrors.NewForbidden(gr, "", errors.New("rbac")), false},
		{apierrors.NewTooManyRequests("slow down", 1), false},
		{apierrors.NewInternalError(errors.New("boom")), false},
	} {
		if got := unreachable(c.err); got != c.want {
			t.Errorf("unreachable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestAPIGate(t *testing.T) {
	g := newAPIGate()
	ctx := context.Background()
	if g.isDown() {
		t.Fatal("a new gate is closed")
	}
	if err := g.wait(ctx, time.Hour); err != nil {
		t.Fatalf("wait on an open gate: %v", err)
	}
	if g.up() {
		t.Error("up on an open gate reported a change")
	}
	if !g.fail() || g.fail() || !g.isDown() {
		t.Fatal("fail: want a change the first time only, and the gate closed")
	}

	// Waiters are held until up releases all of them.
	const n = 3
	released := make(chan error, n)
	for range n {
		go func() { released <- g.wait(ctx, time.Hour) }()
	}
	select {
	case err := <-released:
		t.Fatalf("a waiter passed a closed gate: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if !g.up() {
		t.Fatal("up on a closed gate reported no change")
	}
	for range n {
		select {
		case err := <-released:
			if err != nil {
				t.Errorf("released waiter: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("waiter not released by up")
		}
	}

	// A closed gate lets a call through after maxWait, and gives up when ctx ends.
	g.fail()
	if err := g.wait(ctx, time.Millisecond); err != nil {
		t.Errorf("wait past maxWait: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := g.wait(cctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("wait with an ended context: %v, want context.Canceled", err)
	}
}

// fakeAPI is a fake clientset whose API server can be taken away: while down, lists,
// watches and the version probe fail with "connection refused", and open watches are closed.
type fakeAPI struct {
	client *fake.Clientset
	down   atomic.Bool

	mu        sync.Mutex
	watchers  []watch.Interface
	expire    map[string]bool // resources whose next watch gets 410 Gone
	attempts  map[string]int  // list and watch calls per resource while down
	probeFail int             // failed probes while down
	opened    chan string
}

func newFakeAPI(objs ...runtime.Object) *fakeAPI {
	f := &fakeAPI{client: fake.NewClientset(objs...), expire: map[string]bool{}, attempts: map[string]int{}, opened: make(chan string, 100)}
	f.client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		res := a.GetResource().Resource
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.down.Load() {
			f.attempts[res]++
			return true, nil, errConnRefused
		}
		if f.expire[res] {
			// A restarted API server no longer knows the informer's resource version.
			delete(f.expire, res)
			return true, nil, apierrors.NewResourceExpired("too old resource version")
		}
		w, err := f.client.Tracker().Watch(a.GetResource(), a.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		f.watchers = append(f.watchers, w)
		select {
		case f.opened <- res:
		default:
		}
		return true, w, nil
	})
	f.client.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if f.down.Load() {
			f.mu.Lock()
			f.attempts[a.GetResource().Resource]++
			f.mu.Unlock()
			return true, nil, errConnRefused
		}
		return false, nil, nil
	})
	f.client.PrependReactor("get", "version", func(k8stesting.Action) (bool, runtime.Object, error) {
		if f.down.Load() {
			f.mu.Lock()
			f.probeFail++
			f.mu.Unlock()
			return true, nil, errConnRefused
		}
		return false, nil, nil
	})
	return f
}

// stop takes the API server away and closes every open watch.
func (f *fakeAPI) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down.Store(true)
	for _, w := range f.watchers {
		w.Stop()
	}
	f.watchers = nil
}

// restart brings the API server back; the first watch of each resource is answered 410 Gone,
// so the informers list again.
func (f *fakeAPI) restart(resources ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range resources {
		f.expire[r] = true
	}
	f.down.Store(false)
}

func (f *fakeAPI) counts() (map[string]int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.attempts))
	for k, v := range f.attempts {
		m[k] = v
	}
	return m, f.probeFail
}

// TestSourceReconnectsWhenProbeSeesAPI: during an outage each informer tries the API server
// once and then waits for the probe instead of retrying on client-go's growing backoff; the
// last State stays in force; when the probe sees the API server again the informers list
// again at once, and the next States drop what was deleted meanwhile and carry what changed,
// without ever losing a service that still exists.
func TestSourceReconnectsWhenProbeSeesAPI(t *testing.T) {
	ctx := context.Background()
	port := corev1.ServicePort{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}
	api := newFakeAPI(
		node("node1", "172.31.0.2", "", "10.244.1.0/24"),
		service("default", "a", "10.96.0.10", nil, port),
		slice("default", "a-1", "a", 8080, "", ep("10.244.1.5", "node1", true)),
		service("default", "b", "10.96.0.11", nil, port),
		slice("default", "b-1", "b", 8080, "", ep("10.244.1.6", "node1", true)),
	)
	src := New(api.client, Options{NodeName: "node1", ProbeInterval: 20 * time.Millisecond, StaleAfter: time.Hour})
	states := make(chan *model.State, 100)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx, func(st *model.State) { states <- st }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	resources := []string{"services", "endpointslices", "nodes", "pods"}
	seen := map[string]bool{}
	for len(seen) < len(resources) {
		select {
		case res := <-api.opened:
			seen[res] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("informers opened watches on %v only", seen)
		}
	}
	var first *model.State
	select {
	case first = <-states:
	case <-time.After(10 * time.Second):
		t.Fatal("no first State")
	}
	if got := keys(first); len(got) != 2 {
		t.Fatalf("first State services %v, want default/a and default/b", got)
	}

	// Outage. Meanwhile b is deleted and a's endpoint replaced (straight in the store: no
	// watch is open to tell).
	api.stop()
	tr := api.client.Tracker()
	if err := tr.Delete(schema.GroupVersionResource{Version: "v1", Resource: "services"}, "default", "b"); err != nil {
		t.Fatal(err)
	}
	if err := tr.Update(schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
		slice("default", "a-1", "a", 8080, "", ep("10.244.1.7", "node1", true)), "default"); err != nil {
		t.Fatal(err)
	}
	// Long enough for client-go's backoff (0.8 s, then 1.6 s, each with up to as much jitter)
	// to retry every informer at least once more: 150 failed probes at 20 ms.
	waitFor(t, func() bool { _, p := api.counts(); return p >= 150 })
	attempts, _ := api.counts()
	for _, res := range resources {
		if attempts[res] > 1 {
			t.Errorf("%s tried %d times while the probe failed, want at most once", res, attempts[res])
		}
	}
	if !src.gate.isDown() {
		t.Error("gate open during the outage")
	}
	if src.LastError() == nil {
		t.Error("LastError nil during the outage")
	}
	select {
	case st := <-states:
		t.Fatalf("a State was delivered during the outage: %v", keys(st))
	default:
	}
	if got := keys(src.State()); len(got) != 2 {
		t.Errorf("State during the outage %v, want the last one kept", got)
	}

	// The API server is back: the probe opens the gate, the informers list again.
	for len(api.opened) > 0 {
		<-api.opened
	}
	api.restart(resources...)
	keyA := model.ServiceKey{Namespace: "default", Name: "a"}
	for {
		var st *model.State
		select {
		case st = <-states:
		case <-time.After(10 * time.Second):
			t.Fatalf("no State without default/b and with a's new endpoint after the API came back; last %v", keys(src.State()))
		}
		a := st.Service(keyA)
		if a == nil {
			t.Fatalf("State after the outage lost default/a: %v", keys(st))
		}
		eps := a.Ports[0].Endpoints
		if st.Service(model.ServiceKey{Namespace: "default", Name: "b"}) == nil &&
			len(eps) == 1 && eps[0].IP.String() == "10.244.1.7" {
			break
		}
	}
	if src.gate.isDown() {
		t.Error("gate still closed after the API came back")
	}

	// Watches are open again: a later change arrives as an event (the fake's watch does not
	// replay what happened before it opened, so wait for it).
	for opened := false; !opened; {
		select {
		case res := <-api.opened:
			opened = res == "services"
		case <-time.After(10 * time.Second):
			t.Fatal("services watch not opened again after the outage")
		}
	}
	if _, err := api.client.CoreV1().Services("default").Create(ctx,
		service("default", "c", "10.96.0.12", nil, port), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case st := <-states:
			if st.Service(model.ServiceKey{Namespace: "default", Name: "c"}) != nil {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("service created after the outage not seen; last %v", keys(src.State()))
		}
	}
}
