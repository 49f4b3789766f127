package stats

import (
	"math"
	"testing"
)

func TestPercentileAndSummary(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	if m := Median(xs); m != 3 {
		t.Fatalf("median = %v, want 3", m)
	}
	if xs[0] != 5 {
		t.Fatal("Percentile sorted its input in place")
	}
	if m := Median([]float64{1, 2, 3, 10}); m != 2.5 {
		t.Fatalf("median of an even count = %v, want 2.5", m)
	}
	if p := Percentile([]float64{0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, 99); math.Abs(p-99) > 1e-9 {
		t.Fatalf("p99 = %v, want 99", p)
	}
	if p := Percentile(nil, 50); !math.IsNaN(p) {
		t.Fatalf("percentile of nothing = %v, want NaN", p)
	}
	s := Summarize(xs)
	if s.N != 5 || s.Median != 3 || s.Min != 1 || s.Max != 5 || math.Abs(s.Spread()-4.0/3) > 1e-9 {
		t.Fatalf("summary = %+v spread %v", s, s.Spread())
	}
	if got := s.Format(Seconds); got != "3.00 s (1.00 s–5.00 s, n=5)" {
		t.Fatalf("format = %q", got)
	}
	if got := Summarize(nil).Format(Seconds); got != "—" {
		t.Fatalf("format of nothing = %q", got)
	}
	if got := Summarize([]float64{0.0123}).Format(Seconds); got != "12 ms" {
		t.Fatalf("format of one value = %q", got)
	}
	if r := Ratio(1, 0); !math.IsNaN(r) {
		t.Fatalf("ratio by zero = %v", r)
	}
}

func TestSecondsUnits(t *testing.T) {
	for in, want := range map[float64]string{12.34: "12.3 s", 1.234: "1.23 s", 0.1234: "123 ms", 0.001234: "1.2 ms", 0.000123: "123 µs"} {
		if got := Seconds(in); got != want {
			t.Errorf("Seconds(%v) = %q, want %q", in, got, want)
		}
	}
}

const page = `# HELP kubeproxy_sync_full_proxy_rules_duration_seconds SyncProxyRules latency
# TYPE kubeproxy_sync_full_proxy_rules_duration_seconds histogram
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le="0.001"} 0
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{le="+Inf"} 2
kubeproxy_sync_full_proxy_rules_duration_seconds_sum 3.5
kubeproxy_sync_full_proxy_rules_duration_seconds_count 2
svcproxy_sync_partial_proxy_rules_duration_seconds_sum{backend="iptables"} 0.25
svcproxy_sync_partial_proxy_rules_duration_seconds_count{backend="iptables"} 5
svcproxy_sync_partial_proxy_rules_duration_seconds_sum{backend="ebpf"} 0.75
svcproxy_sync_partial_proxy_rules_duration_seconds_count{backend="ebpf"} 5
process_resident_memory_bytes 1.2e+08
`

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(page)
	if err != nil {
		t.Fatal(err)
	}
	sum, count, ok := m.Histogram("kubeproxy_sync_full_proxy_rules_duration_seconds")
	if !ok || sum != 3.5 || count != 2 {
		t.Fatalf("full = %v %v %v", sum, count, ok)
	}
	if _, _, ok := m.Histogram("nope"); ok {
		t.Fatal("found a histogram that is not there")
	}
	if m["process_resident_memory_bytes"] != 1.2e8 {
		t.Fatalf("rss = %v", m["process_resident_memory_bytes"])
	}
	before := Metrics{"svcproxy_sync_partial_proxy_rules_duration_seconds_sum": 0.5, "svcproxy_sync_partial_proxy_rules_duration_seconds_count": 8}
	mean, n := m.MeanSince(before, "svcproxy_sync_partial_proxy_rules_duration_seconds")
	if n != 2 || mean != 0.25 {
		t.Fatalf("mean since = %v over %v, want 0.25 over 2", mean, n)
	}
	if _, err := ParseMetrics("x{a=\"b\" 1\n"); err == nil {
		t.Fatal("unterminated labels parsed")
	}
	if _, err := ParseMetrics("x abc\n"); err == nil {
		t.Fatal("bad value parsed")
	}
}
