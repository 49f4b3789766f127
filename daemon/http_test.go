package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/proxy/syncloop"
)

// hungBackend's Sync blocks until release is closed, as a hung iptables-restore.
type hungBackend struct {
	entered chan struct{}
	release chan struct{}
}

func (b *hungBackend) Name() string { return "hung" }
func (b *hungBackend) Sync(ctx context.Context, st *model.State, c model.Changes, full bool) (proxy.SyncResult, error) {
	b.entered <- struct{}{}
	<-b.release
	return proxy.SyncResult{}, nil
}
func (b *hungBackend) Verify(context.Context) (bool, error) { return true, nil }
func (b *hungBackend) Cleanup(context.Context) error        { return nil }

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Step(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func getHealth(t *testing.T, h http.Handler, path string) (int, map[string]any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("%s: body %q: %v", path, rec.Body.String(), err)
	}
	return rec.Code, body
}

// TestLivezFailsWhenSyncIsWedged: a change queued behind a hung sync for the health timeout
// (2 x syncPeriod) fails /livez and /healthz, so that the kubelet restarts the daemon; before
// that both answer 200.
func TestLivezFailsWhenSyncIsWedged(t *testing.T) {
	clk := &testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	b := &hungBackend{entered: make(chan struct{}, 1), release: make(chan struct{})}
	loop := syncloop.New(b, syncloop.Options{MinInterval: time.Millisecond, Period: 30 * time.Second, Now: clk.Now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { loop.Run(ctx); close(done) }()
	defer func() { close(b.release); cancel(); <-done }()
	d := &Daemon{cfg: &config.Config{NodeName: "n1"}, backend: b, loop: loop}
	h := d.healthHandler()

	for _, p := range []string{"/livez", "/healthz"} {
		if code, body := getHealth(t, h, p); code != 200 || body["healthy"] != true {
			t.Errorf("%s with nothing queued: %d %v", p, code, body)
		}
	}
	loop.Update(&model.State{NodeName: "n1"})
	<-b.entered
	clk.Step(59 * time.Second)
	for _, p := range []string{"/livez", "/healthz"} {
		if code, body := getHealth(t, h, p); code != 200 {
			t.Errorf("%s with a change queued 59 s: %d %v", p, code, body)
		}
	}
	clk.Step(time.Second)
	for _, p := range []string{"/livez", "/healthz"} {
		code, body := getHealth(t, h, p)
		if code != 503 || body["healthy"] != false || body["reason"] == nil || body["currentTime"] == nil || body["lastUpdated"] == nil {
			t.Errorf("%s with a change queued 60 s behind a hung sync: %d %v, want 503", p, code, body)
		}
		if _, ok := body["nodeEligible"]; ok {
			t.Errorf("%s: nodeEligible is for cluster mode only: %v", p, body)
		}
	}
}

// TestHealthAnswer: the decision of each endpoint from its inputs.
func TestHealthAnswer(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	base := healthInput{now: now, nodeName: "n1", mode: "iptables", live: true, healthy: true, ready: true,
		loop: syncloop.Status{LastSuccess: now.Add(-time.Minute)}}
	cluster := base
	cluster.cluster, cluster.eligible, cluster.lastContact = true, true, now
	for _, c := range []struct {
		name     string
		path     string
		in       func(healthInput) healthInput
		from     healthInput
		code     int
		eligible any // nil: field absent
		check    func(map[string]any) bool
	}{
		{name: "standalone healthz", path: "/healthz", from: base, code: 200},
		{name: "standalone livez", path: "/livez", from: base, code: 200},
		{name: "not live: livez", path: "/livez", from: base, code: 503,
			in: func(i healthInput) healthInput { i.live, i.liveWhy = false, "a change has waited 1m"; return i }},
		{name: "not live: healthz", path: "/healthz", from: cluster, code: 503, eligible: true,
			in: func(i healthInput) healthInput { i.live, i.liveWhy = false, "a change has waited 1m"; return i }},
		// The contract (../shared/CONTRACT.md): /healthz is 200 only when the last sync
		// succeeded, stricter than kube-proxy, which waits for the health timeout; /livez
		// keeps kube-proxy's rule, so the daemon is not restarted for one failure.
		{name: "last sync failed, change still young: healthz (contract)", path: "/healthz", from: base, code: 503,
			in: func(i healthInput) healthInput {
				i.healthy, i.loop.LastError, i.loop.PendingSince = false, "iptables-restore: exit 1", now.Add(-time.Second)
				return i
			},
			check: func(b map[string]any) bool {
				return b["lastSyncError"] == "iptables-restore: exit 1" && b["pendingSince"] != nil
			}},
		{name: "last sync failed, change still young: livez as kube-proxy", path: "/livez", from: base, code: 200,
			in: func(i healthInput) healthInput {
				i.healthy, i.loop.LastError, i.loop.PendingSince = false, "iptables-restore: exit 1", now.Add(-time.Second)
				return i
			}},
		{name: "last sync failed: readyz", path: "/readyz", from: base, code: 503,
			in: func(i healthInput) healthInput { i.healthy, i.healthyWhy = false, "last sync failed"; return i }},
		{name: "no sync yet: readyz", path: "/readyz", from: base, code: 503,
			in: func(i healthInput) healthInput { i.ready = false; return i }},
		{name: "cluster healthz", path: "/healthz", from: cluster, code: 200, eligible: true},
		{name: "node tainted: healthz", path: "/healthz", from: cluster, code: 503, eligible: false,
			in: func(i healthInput) healthInput {
				i.eligible, i.eligibleWhy = false, "Node n1 has the ToBeDeletedByClusterAutoscaler taint"
				return i
			},
			check: func(b map[string]any) bool {
				return b["reason"] == "Node n1 has the ToBeDeletedByClusterAutoscaler taint"
			}},
		{name: "node tainted: livez", path: "/livez", from: cluster, code: 200,
			in: func(i healthInput) healthInput { i.eligible = false; return i }},
		{name: "API outage: healthz stays 200 and says stale", path: "/healthz", from: cluster, code: 200, eligible: true,
			in: func(i healthInput) healthInput {
				i.stale, i.apiErr, i.lastContact = true, errors.New("connection refused"), now.Add(-time.Minute)
				return i
			},
			check: func(b map[string]any) bool { return b["apiStale"] == true && b["apiError"] == "connection refused" }},
		{name: "API outage: livez stays 200", path: "/livez", from: cluster, code: 200,
			in: func(i healthInput) healthInput { i.stale = true; return i }},
	} {
		in := c.from
		if c.in != nil {
			in = c.in(in)
		}
		in.path = c.path
		code, body := healthAnswer(in)
		raw, _ := json.Marshal(body)
		var b map[string]any
		_ = json.Unmarshal(raw, &b)
		if code != c.code || b["healthy"] != (c.code == 200) || b["currentTime"] == nil || b["lastUpdated"] == nil ||
			b["nodeName"] != "n1" || b["mode"] != "iptables" {
			t.Errorf("%s: %d %s, want %d", c.name, code, raw, c.code)
		}
		if c.code != 200 && b["reason"] == nil {
			t.Errorf("%s: a failure must say why: %s", c.name, raw)
		}
		if b["nodeEligible"] != c.eligible && c.path == "/healthz" {
			t.Errorf("%s: nodeEligible %v, want %v: %s", c.name, b["nodeEligible"], c.eligible, raw)
		}
		if c.check != nil && !c.check(b) {
			t.Errorf("%s: body %s", c.name, raw)
		}
	}
}
