package podserver_test

import (
	"context"
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
