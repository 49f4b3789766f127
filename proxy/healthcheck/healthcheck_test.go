package healthcheck

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// switchProbe fails for addresses in down.
type switchProbe struct {
	mu    sync.Mutex
	down  map[netip.AddrPort]bool
	calls atomic.Int64
}

func (s *switchProbe) probe(_ context.Context, _ Spec, a netip.AddrPort) error {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down[a] {
		return errors.New("connection refused")
	}
	return nil
}

func (s *switchProbe) set(a netip.AddrPort, down bool) {
	s.mu.Lock()
	s.down[a] = down
	s.mu.Unlock()
}

func wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testState() *model.State {
	eps := []model.Endpoint{
		{IP: netip.MustParseAddr("10.244.1.2"), Port: 8080, Ready: true, Serving: true},
		{IP: netip.MustParseAddr("10.244.1.3"), Port: 8080, Ready: true, Serving: true},
	}
	return &model.State{Services: []*model.Service{
		{Key: model.ServiceKey{Namespace: "default", Name: "web"}, Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: eps}}},
		{Key: model.ServiceKey{Namespace: "default", Name: "unchecked"}, Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80,
			Endpoints: append([]model.Endpoint(nil), eps...)}}},
	}}
}

func TestThresholdsAndApply(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sp := &switchProbe{down: map[netip.AddrPort]bool{}}
	var changes atomic.Int64
	c := New(ctx, sp.probe, func() { changes.Add(1) }, nil)
	web := model.ServiceKey{Namespace: "default", Name: "web"}
	specs := map[model.ServiceKey]Spec{web: {Type: "tcp", Interval: time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 3}}
	st := testState()
	targets := Targets(st, specs)
	if len(targets) != 2 {
		t.Fatalf("want 2 targets (only the checked service), got %d", len(targets))
	}
	bad := netip.MustParseAddrPort("10.244.1.3:8080")
	sp.set(bad, true)
	c.Set(targets)
	if !c.Healthy(web, bad) {
		t.Fatal("a new target must start healthy")
	}
	wait(t, "endpoint marked unhealthy", func() bool { return !c.Healthy(web, bad) })
	// onChange runs after the state is published: wait for it rather than race it (this
	// assertion failed once in CI under load).
	wait(t, "onChange for the transition", func() bool { return changes.Load() >= 1 })
	if n := changes.Load(); n != 1 {
		t.Errorf("one transition, got %d onChange calls", n)
	}
	c.Apply(st, specs)
	if e := st.Services[0].Ports[0].Endpoints[1]; e.Ready || e.Serving {
		t.Errorf("failing endpoint must be not ready: %+v", e)
	}
	if e := st.Services[0].Ports[0].Endpoints[0]; !e.Ready {
		t.Errorf("healthy endpoint must stay ready: %+v", e)
	}
	if e := st.Services[1].Ports[0].Endpoints[1]; !e.Ready {
		t.Errorf("a service without a check must not be touched: %+v", e)
	}
	sp.set(bad, false)
	wait(t, "endpoint back", func() bool { return c.Healthy(web, bad) })
	wait(t, "onChange for the second transition", func() bool { return changes.Load() >= 2 })
	if n := changes.Load(); n != 2 {
		t.Errorf("two transitions, got %d", n)
	}
	// Removing the targets stops the probers.
	c.Set(nil)
	before := sp.calls.Load()
	time.Sleep(20 * time.Millisecond)
	if after := sp.calls.Load(); after > before+2 {
		t.Errorf("probers kept running after removal: %d -> %d calls", before, after)
	}
}

func TestCheckPortOverride(t *testing.T) {
	st := testState()
	web := model.ServiceKey{Namespace: "default", Name: "web"}
	got := Targets(st, map[model.ServiceKey]Spec{web: {Port: 9000}})
	if len(got) != 2 || got[0].Addr.Port() != 9000 {
		t.Fatalf("check port must replace the endpoint port: %+v", got)
	}
}
