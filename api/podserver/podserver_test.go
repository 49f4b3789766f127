package podserver_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/api/podserver/podservertest"
)

// Register puts the pod API beside the daemon's other handlers on one mux.
func TestRegisterOnSharedMux(t *testing.T) {
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, http.StatusOK, &api.Status{NodeName: "node1"})
	})
	podserver.New(podservertest.NewMemIPAM(n), n, nil).Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for _, tc := range []struct{ method, path, body, want string }{
		{http.MethodGet, api.PathStatus, "", `"nodeName": "node1"`},
		{http.MethodGet, api.PathPodsStatus, "", `"ready": true`},
		{http.MethodPost, api.PathPodsAllocate, `{"containerID": "c1", "ifName": "eth0"}`, `"address": "10.244.1.2/24"`},
		{http.MethodPost, api.PathPodsCheck, `{"containerID": "c1", "ifName": "eth0"}`, `"gateway": "10.244.1.1"`},
	} {
		req, err := http.NewRequestWithContext(context.Background(), tc.method, srv.URL+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s %s: %s %s, want 200 containing %s", tc.method, tc.path, resp.Status, string(b), tc.want)
		}
	}
}

// notReady is an IPAM that cannot answer yet (a node whose pod range is not known).
type notReady struct{}

func (notReady) Allocate(context.Context, podserver.Pod) ([]netip.Addr, error) {
	return nil, podserver.ErrNotReady
}
func (notReady) Release(context.Context, podserver.Attachment) error { return podserver.ErrNotReady }
func (notReady) Check(context.Context, podserver.Attachment) ([]netip.Addr, error) {
	return nil, podserver.ErrNotReady
}
func (notReady) GC(context.Context, []podserver.Attachment) ([]podserver.Released, error) {
	return nil, podserver.ErrNotReady
}
func (notReady) Ready(context.Context) error { return podserver.ErrNotReady }

// TestNotReadyMeansTryAgainLater: DEL, CHECK and GC of an IPAM that is not ready yet answer
// CNI code 11, so the runtime retries instead of failing the pod.
func TestNotReadyMeansTryAgainLater(t *testing.T) {
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}}}
	h := podserver.New(notReady{}, n, nil)
	for _, tc := range []struct{ path, body string }{
		{api.PathPodsRelease, `{"containerID": "c1", "ifName": "eth0"}`},
		{api.PathPodsCheck, `{"containerID": "c1", "ifName": "eth0"}`},
		{api.PathPodsGC, `{"validAttachments": []}`},
		{api.PathPodsAllocate, `{"containerID": "c1", "ifName": "eth0"}`},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body)))
		if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"code": 11`) {
			t.Errorf("%s: %d %s, want 503 with code 11", tc.path, rec.Code, rec.Body.String())
		}
	}
}

// gcRefuser refuses GC, as the store does for an empty list while pods are allocated.
type gcRefuser struct{ notReady }

func (gcRefuser) GC(context.Context, []podserver.Attachment) ([]podserver.Released, error) {
	return nil, fmt.Errorf("%w: the runtime listed no valid attachment while this node holds 3 pod allocations", podserver.ErrGCRefused)
}

// TestGCRefused: a GC the IPAM refuses (empty list, pods allocated) answers 409 with CNI code
// 11 and the reason, not a generic I/O failure.
func TestGCRefused(t *testing.T) {
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}}}
	rec := httptest.NewRecorder()
	podserver.New(gcRefuser{}, n, nil).ServeHTTP(rec, httptest.NewRequest(http.MethodPost, api.PathPodsGC, strings.NewReader(`{"validAttachments": []}`)))
	if rec.Code != http.StatusConflict || !strings.Contains(rec.Body.String(), `"code": 11`) || !strings.Contains(rec.Body.String(), "no valid attachment") {
		t.Fatalf("GC refused: %d %s, want 409 with code 11 and the reason", rec.Code, rec.Body.String())
	}
}
