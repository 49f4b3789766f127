package syncloop

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// fakeBackend records syncs; block, when set, holds each Sync until a value is received.
type fakeBackend struct {
	mu      sync.Mutex
	syncs   []call
	fail    int // fail this many next syncs
	intact  bool
	block   chan struct{}
	entered chan struct{}
}

type call struct {
	full     bool
	services int
	changed  int
}

func (f *fakeBackend) Name() string { return "fake" }
func (f *fakeBackend) Sync(ctx context.Context, st *model.State, c model.Changes, full bool) (proxy.SyncResult, error) {
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.block != nil {
		<-f.block
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs = append(f.syncs, call{full: full, services: len(st.Services), changed: len(c.Services)})
	if f.fail > 0 {
		f.fail--
		return proxy.SyncResult{}, errors.New("kernel said no")
	}
	return proxy.SyncResult{Full: full, ServicesWritten: len(c.Services)}, nil
}
func (f *fakeBackend) Verify(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.intact, nil
}
func (f *fakeBackend) Cleanup(context.Context) error { return nil }
func (f *fakeBackend) calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.syncs...)
}

func state(n int) *model.State {
	st := &model.State{NodeName: "n1"}
	for i := 0; i < n; i++ {
		st.Services = append(st.Services, &model.Service{Key: model.ServiceKey{Namespace: "default", Name: string(rune('a' + i))}})
	}
	return st
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func start(t *testing.T, b proxy.Backend, o Options) *Loop {
	l := New(b, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

func TestBurstIsCoalesced(t *testing.T) {
	b := &fakeBackend{intact: true, block: make(chan struct{}), entered: make(chan struct{}, 10)}
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: time.Hour})
	l.Update(state(1))
	<-b.entered // the first sync is in progress and blocked
	for i := 2; i <= 50; i++ {
		l.Update(state(i))
	}
	close(b.block)
	waitFor(t, "last generation applied", func() bool { return l.Status().AppliedGeneration == 50 })
	calls := b.calls()
	if len(calls) != 2 {
		t.Fatalf("50 updates during one sync should give 2 syncs, got %d: %+v", len(calls), calls)
	}
	if !calls[0].full || calls[1].full {
		t.Errorf("first sync must be full and the second partial: %+v", calls)
	}
	if calls[1].services != 50 || calls[1].changed != 49 {
		t.Errorf("second sync should carry 50 services, 49 changed: %+v", calls[1])
	}
	if ok, why := l.Healthy(); !ok || !l.Ready() {
		t.Errorf("healthy=%v (%s) ready=%v after success", ok, why, l.Ready())
	}
}

func TestFailureRetriesAsFullSync(t *testing.T) {
	b := &fakeBackend{intact: true, fail: 2}
	m := metrics.New()
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: time.Hour, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, Metrics: m})
	l.Update(state(3))
	waitFor(t, "recovery", func() bool { return l.Status().AppliedGeneration == 1 })
	calls := b.calls()
	if len(calls) != 3 {
		t.Fatalf("want 2 failures then success, got %+v", calls)
	}
	for _, c := range calls {
		if !c.full {
			t.Errorf("every retry must be a full sync: %+v", calls)
		}
	}
	l.Update(state(4))
	waitFor(t, "partial sync", func() bool { return l.Status().AppliedGeneration == 2 })
	if c := b.calls()[3]; c.full || c.changed != 1 {
		t.Errorf("after recovery a change should be a partial sync of 1 service: %+v", c)
	}
}

func TestHealthReportsFailure(t *testing.T) {
	b := &fakeBackend{intact: true, fail: 1000}
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: time.Hour, MinBackoff: time.Hour})
	l.Update(state(1))
	waitFor(t, "first attempt", func() bool { return len(b.calls()) >= 1 })
	waitFor(t, "status", func() bool { return l.Status().LastError != "" })
	if ok, why := l.Healthy(); ok || why == "" {
		t.Errorf("a failed sync must make the loop unhealthy, got %v %q", ok, why)
	}
	if l.Ready() {
		t.Error("never synced: must not be ready")
	}
}

func TestTamperingForcesFullSync(t *testing.T) {
	b := &fakeBackend{intact: true}
	m := metrics.New()
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: 10 * time.Millisecond, Metrics: m})
	l.Update(state(2))
	waitFor(t, "first sync", func() bool { return len(b.calls()) == 1 })
	b.mu.Lock()
	b.intact = false
	b.mu.Unlock()
	waitFor(t, "full resync after tampering", func() bool { return len(b.calls()) >= 2 })
	if c := b.calls()[1]; !c.full {
		t.Errorf("tampering must force a full sync: %+v", c)
	}
}

// TestBurstThenRateLimit: two syncs may run back to back; a third waits for MinInterval.
func TestBurstThenRateLimit(t *testing.T) {
	b := &fakeBackend{intact: true}
	l := start(t, b, Options{MinInterval: time.Hour, Period: time.Hour})
	l.Update(state(1))
	waitFor(t, "first sync", func() bool { return l.Status().AppliedGeneration == 1 })
	l.Update(state(2))
	waitFor(t, "second sync without waiting for MinInterval", func() bool { return l.Status().AppliedGeneration == 2 })
	l.Update(state(3))
	time.Sleep(50 * time.Millisecond)
	if g := l.Status().AppliedGeneration; g != 2 {
		t.Fatalf("a third sync within MinInterval must wait; applied generation %d", g)
	}
	if len(b.calls()) != 2 {
		t.Fatalf("calls: %+v", b.calls())
	}
}

func TestEqualUpdateKeepsGeneration(t *testing.T) {
	b := &fakeBackend{intact: true}
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: time.Hour})
	if g := l.Update(state(2)); g != 1 {
		t.Fatalf("first generation %d", g)
	}
	waitFor(t, "sync", func() bool { return l.Status().AppliedGeneration == 1 })
	if g := l.Update(state(2)); g != 1 {
		t.Fatalf("an equal state must keep generation 1, got %d", g)
	}
	if g := l.Update(state(3)); g != 2 {
		t.Fatalf("a changed state must bump the generation, got %d", g)
	}
	waitFor(t, "second sync", func() bool { return l.Status().AppliedGeneration == 2 })
	if n := len(b.calls()); n != 2 {
		t.Fatalf("want 2 syncs, got %d", n)
	}
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestLiveness is the decision alone: a change queued and not yet programmed for at least the
// health timeout makes the loop not live (kube-proxy's rule); nothing else does.
func TestLiveness(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const timeout = 60 * time.Second
	for _, c := range []struct {
		name    string
		pending time.Time
		lastErr string
		want    bool
	}{
		{"nothing pending", time.Time{}, "", true},
		{"nothing pending, last sync failed", time.Time{}, "kernel said no", true},
		{"pending, younger than the timeout", now.Add(-59 * time.Second), "", true},
		{"pending, failing but younger than the timeout", now.Add(-59 * time.Second), "kernel said no", true},
		{"pending exactly the timeout", now.Add(-timeout), "", false},
		{"pending, older than the timeout", now.Add(-10 * time.Minute), "", false},
	} {
		ok, why := Liveness(Status{PendingSince: c.pending, LastError: c.lastErr}, now, timeout)
		if ok != c.want || (!ok && why == "") {
			t.Errorf("%s: live=%v %q, want %v", c.name, ok, why, c.want)
		}
	}
}

// TestLiveWithFakeClock runs the loop with a fake clock: no state, a programmed state, a change
// that a hung backend never finishes, and a sync that keeps failing and retrying.
func TestLiveWithFakeClock(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts := Options{MinInterval: time.Millisecond, Period: time.Hour, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Now: clk.Now}

	t.Run("default timeout is twice the period", func(t *testing.T) {
		l := New(&fakeBackend{intact: true}, Options{Period: 7 * time.Second})
		if l.HealthTimeout() != 14*time.Second {
			t.Errorf("health timeout %v", l.HealthTimeout())
		}
	})
	t.Run("no state yet", func(t *testing.T) {
		l := start(t, &fakeBackend{intact: true}, opts)
		clk.Step(time.Hour)
		if ok, why := l.Live(); !ok {
			t.Errorf("nothing queued: live=%v %q", ok, why)
		}
	})
	t.Run("programmed", func(t *testing.T) {
		l := start(t, &fakeBackend{intact: true}, opts)
		l.Update(state(1))
		waitFor(t, "sync", func() bool { return l.Status().AppliedGeneration == 1 })
		clk.Step(3 * time.Hour)
		if ok, why := l.Live(); !ok {
			t.Errorf("everything programmed: live=%v %q", ok, why)
		}
	})
	t.Run("hung backend", func(t *testing.T) {
		b := &fakeBackend{intact: true, block: make(chan struct{}), entered: make(chan struct{}, 10)}
		l := start(t, b, opts)
		defer close(b.block)
		l.Update(state(1))
		<-b.entered
		clk.Step(2*time.Hour - time.Second)
		if ok, why := l.Live(); !ok {
			t.Errorf("queued for less than the timeout: live=%v %q", ok, why)
		}
		clk.Step(time.Second)
		if ok, _ := l.Live(); ok {
			t.Error("a change queued for the whole timeout behind a hung sync must fail liveness")
		}
	})
	t.Run("failing and retrying", func(t *testing.T) {
		b := &fakeBackend{intact: true, fail: 1 << 30}
		l := start(t, b, opts)
		l.Update(state(1))
		waitFor(t, "retries", func() bool { return len(b.calls()) >= 3 })
		if ok, why := l.Live(); !ok {
			t.Errorf("failing for less than the timeout: live=%v %q", ok, why)
		}
		clk.Step(2 * time.Hour)
		n := len(b.calls())
		waitFor(t, "more retries", func() bool { return len(b.calls()) > n })
		if ok, _ := l.Live(); ok {
			t.Error("a sync that keeps failing leaves the change unapplied: liveness must fail after the timeout")
		}
		if s := l.Status(); s.PendingSince.IsZero() {
			t.Error("PendingSince must stay set while retries fail")
		}
	})
	t.Run("forced full sync that fails", func(t *testing.T) {
		b := &fakeBackend{intact: true}
		l := start(t, b, opts)
		l.Update(state(1))
		waitFor(t, "sync", func() bool { return l.Status().AppliedGeneration == 1 })
		b.mu.Lock()
		b.fail = 1 << 30
		b.mu.Unlock()
		l.RequestFullSync()
		waitFor(t, "failed full sync", func() bool { return l.Status().LastError != "" })
		clk.Step(2 * time.Hour)
		if ok, _ := l.Live(); ok {
			t.Error("a requested full sync that never succeeds must fail liveness after the timeout")
		}
	})
}

// TestLiveUnderConstantChurn: changes that keep arriving while syncs keep succeeding must not
// fail liveness: after each successful sync only what was queued after the state it programmed
// counts (kube-proxy clears its oldest queued time on every successful sync).
func TestLiveUnderConstantChurn(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b := &fakeBackend{intact: true, block: make(chan struct{}), entered: make(chan struct{}, 10)}
	l := start(t, b, Options{MinInterval: time.Millisecond, Period: 30 * time.Second, Now: clk.Now})
	defer close(b.block)
	l.Update(state(1))
	<-b.entered
	for i := 2; i < 10; i++ {
		clk.Step(50 * time.Second)
		l.Update(state(i)) // queued while the sync of the previous state runs
		b.block <- struct{}{}
		<-b.entered // that sync succeeded, the next one (of state i) started
		waitFor(t, "applied", func() bool { return l.Status().AppliedGeneration == uint64(i-1) })
		clk.Step(20 * time.Second)
		if ok, why := l.Live(); !ok {
			t.Fatalf("round %d: syncs keep succeeding, the oldest unprogrammed change is 20 s old: %q", i, why)
		}
	}
}
