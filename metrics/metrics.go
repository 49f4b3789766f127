// Package metrics defines svcproxy's Prometheus metrics. They live in a registry owned by one
// daemon (no package-level state), named with the svcproxy_ prefix and, where kube-proxy has an
// equivalent, kube-proxy's name after the prefix so dashboards carry over.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds every metric of one daemon.
type Metrics struct {
	Registry *prometheus.Registry

	SyncDuration        prometheus.Histogram
	SyncFullDuration    prometheus.Histogram
	SyncPartialDuration prometheus.Histogram
	LastSyncTimestamp   prometheus.Gauge
	LastQueuedTimestamp prometheus.Gauge
	NetworkProgramming  prometheus.Histogram
	SyncFailures        prometheus.Counter
	RulesTampered       prometheus.Counter
	ObjectsWritten      *prometheus.CounterVec

	ConfigReloads        prometheus.Counter
	ConfigReloadFailures prometheus.Counter

	Services  prometheus.Gauge
	Endpoints prometheus.Gauge
	// ServiceChangesPending counts services changed since the last successful sync.
	ServiceChangesPending prometheus.Gauge
	ServiceChangesTotal   prometheus.Counter
}

// syncBuckets cover 1 ms to ~2 min, like kube-proxy's sync histograms.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 18)

// New creates the metrics in a fresh registry, with the Go and process collectors.
func New() *Metrics {
	r := prometheus.NewRegistry()
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "svcproxy", Name: name, Help: help, Buckets: buckets})
		r.MustRegister(h)
		return h
	}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "svcproxy", Name: name, Help: help})
		r.MustRegister(g)
		return g
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "svcproxy", Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	m := &Metrics{
		Registry:             r,
		SyncDuration:         hist("sync_proxy_rules_duration_seconds", "Time one sync of the proxy rules took, full or partial.", syncBuckets),
		SyncFullDuration:     hist("sync_full_proxy_rules_duration_seconds", "Time one full sync of the proxy rules took.", syncBuckets),
		SyncPartialDuration:  hist("sync_partial_proxy_rules_duration_seconds", "Time one partial sync of the proxy rules took.", syncBuckets),
		LastSyncTimestamp:    gauge("sync_proxy_rules_last_timestamp_seconds", "Unix time of the last successful sync."),
		LastQueuedTimestamp:  gauge("sync_proxy_rules_last_queued_timestamp_seconds", "Unix time a sync was last asked for."),
		NetworkProgramming:   hist("network_programming_duration_seconds", "Time from a service or endpoint change (trigger time) to its rules being written.", prometheus.ExponentialBuckets(0.001, 2, 20)),
		SyncFailures:         counter("sync_proxy_rules_failures_total", "Syncs the kernel refused."),
		RulesTampered:        counter("sync_proxy_rules_tampered_total", "Times the programmed rules were found changed by someone else (forcing a full sync)."),
		ConfigReloads:        counter("config_reloads_total", "Config file loads that were valid and applied."),
		ConfigReloadFailures: counter("config_reload_failures_total", "Config file loads that were invalid and changed nothing."),
		Services:             gauge("services", "Services in the desired state."),
		Endpoints:            gauge("endpoints", "Endpoints (over every service port) in the desired state."),
		ServiceChangesPending: gauge("sync_proxy_rules_service_changes_pending",
			"Services changed since the last successful sync."),
		ServiceChangesTotal: counter("sync_proxy_rules_service_changes_total", "Service changes seen."),
	}
	m.ObjectsWritten = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "svcproxy", Name: "sync_objects_written_total",
		Help: "Rules (iptables) or map entries (ebpf) written."}, []string{"backend"})
	r.MustRegister(m.ObjectsWritten)
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
