package metrics

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestContractNames checks every metric CONTRACT.md promises is exposed under its name.
func TestContractNames(t *testing.T) {
	m := New()
	m.SyncDuration.Observe(0.01)
	m.SyncFullDuration.Observe(0.01)
	m.SyncPartialDuration.Observe(0.01)
	m.NetworkProgramming.Observe(0.1)
	m.ObjectsWritten.WithLabelValues("iptables").Add(3)
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, name := range []string{
		"svcproxy_sync_proxy_rules_duration_seconds_bucket",
		"svcproxy_sync_full_proxy_rules_duration_seconds_bucket",
		"svcproxy_sync_partial_proxy_rules_duration_seconds_bucket",
		"svcproxy_sync_proxy_rules_last_timestamp_seconds",
		"svcproxy_network_programming_duration_seconds_bucket",
		"svcproxy_config_reload_failures_total",
		"svcproxy_services",
		"svcproxy_endpoints",
		`svcproxy_sync_objects_written_total{backend="iptables"} 3`,
	} {
		if !strings.Contains(body, name) {
			t.Errorf("metric %s missing from /metrics", name)
		}
	}
	// Two daemons in one process (tests) must not share metrics.
	if New().Registry == m.Registry {
		t.Error("registries must be per daemon")
	}
}
