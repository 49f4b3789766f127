package daemon

import (
	"context"
	"net/http"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/proxy/syncloop"
)

func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.Handler())
	return mux
}

// healthHandler serves kube-proxy's /livez and /healthz, and /readyz:
//   - /livez: 503 when a change has been queued for the health timeout (2 x syncPeriod) without
//     being programmed (a wedged sync loop, a hung or always failing backend), so that the
//     kubelet restarts the daemon; 200 otherwise.
//   - /healthz: as /livez, and in cluster mode also 503 while this node's Node is being deleted
//     or tainted ToBeDeletedByClusterAutoscaler (KEP-3836), so that load balancers drain it.
//   - /readyz: 200 once a first sync succeeded and the last one did not fail.
//
// In cluster mode an API outage fails none of them (the rules stay right as of the last view,
// and failing every node at once would empty load balancers); the body says the view is stale.
func (d *Daemon) healthHandler() http.Handler {
	mux := http.NewServeMux()
	for _, path := range []string{"/livez", "/healthz", "/readyz"} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			code, body := healthAnswer(d.healthInput(path))
			w.Header().Set("X-Content-Type-Options", "nosniff")
			api.WriteJSON(w, code, body)
		})
	}
	return mux
}

// healthInput is everything a health answer depends on.
type healthInput struct {
	path           string // /livez, /healthz or /readyz
	now            time.Time
	nodeName, mode string
	loop           syncloop.Status
	healthTimeout  time.Duration
	live           bool // syncloop Live
	liveWhy        string
	healthy        bool // syncloop Healthy (Live and the last sync succeeded)
	healthyWhy     string
	ready          bool // a first sync succeeded
	// Cluster mode only.
	cluster     bool
	eligible    bool // kube.Source NodeEligible
	eligibleWhy string
	stale       bool
	lastContact time.Time
	apiErr      error
}

func (d *Daemon) healthInput(path string) healthInput {
	in := healthInput{path: path, now: time.Now(), nodeName: d.cfg.NodeName, mode: d.backend.Name(),
		loop: d.loop.Status(), healthTimeout: d.loop.HealthTimeout(), ready: d.loop.Ready()}
	in.live, in.liveWhy = d.loop.Live()
	in.healthy, in.healthyWhy = d.loop.Healthy()
	if d.kube != nil {
		in.cluster = true
		in.eligible, in.eligibleWhy = d.kube.NodeEligible()
		in.stale, in.lastContact, in.apiErr = d.kube.Stale(), d.kube.LastContact(), d.kube.LastError()
	}
	return in
}

// healthAnswer decides one health answer: its status code and JSON body. The body has
// kube-proxy's fields (lastUpdated: the last successful sync; currentTime; healthy;
// nodeEligible on /healthz in cluster mode) and svcproxy's (nodeName, mode, reason when
// failing, pendingSince, lastSyncError, apiLastContact, apiStale, apiError).
func healthAnswer(in healthInput) (int, map[string]any) {
	ok, why := in.live, in.liveWhy
	body := map[string]any{"lastUpdated": in.loop.LastSuccess, "currentTime": in.now, "nodeName": in.nodeName, "mode": in.mode}
	switch in.path {
	case "/healthz":
		// The contract: 200 only when the last sync succeeded (and, as kube-proxy, none is
		// overdue and the node is eligible).
		if ok && in.loop.LastError != "" {
			ok, why = false, "the last sync failed: "+in.loop.LastError
		}
		if in.cluster {
			body["nodeEligible"] = in.eligible
			if ok && !in.eligible {
				ok, why = false, in.eligibleWhy
				if why == "" {
					why = "node not eligible"
				}
			}
		}
	case "/readyz":
		ok, why = in.healthy, in.healthyWhy
		if !in.ready {
			ok, why = false, "no sync has succeeded yet"
		}
	}
	if !in.loop.PendingSince.IsZero() {
		body["pendingSince"] = in.loop.PendingSince
	}
	if in.healthTimeout > 0 {
		body["healthTimeout"] = in.healthTimeout.String()
	}
	if in.loop.LastError != "" {
		body["lastSyncError"] = in.loop.LastError
	}
	if in.cluster {
		body["apiLastContact"] = in.lastContact
		if in.stale {
			body["apiStale"] = true
			if in.apiErr != nil {
				body["apiError"] = in.apiErr.Error()
			}
		}
	}
	body["healthy"] = ok
	if !ok {
		body["reason"] = why
		return http.StatusServiceUnavailable, body
	}
	return http.StatusOK, body
}

// proxyLive is the proxy's health for the health-check node ports (serviceProxyHealthy), as
// kube-proxy's: the sync loop's Live.
func (d *Daemon) proxyLive() bool {
	ok, _ := d.loop.Live()
	return ok
}

func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		api.WriteJSON(w, http.StatusOK, d.status(r.Context()))
	})
	podserver.New(notifyingIPAM{PodIPAM: lazyPodIPAM{d}, changed: d.requestRepublish}, d, d.log).Register(mux)
	return mux
}

func (d *Daemon) status(ctx context.Context) *api.Status {
	ls := d.loop.Status()
	ok, why := d.loop.Healthy()
	d.mu.Lock()
	s := &api.Status{
		Version: d.opts.Version, NodeName: d.cfg.NodeName, Mode: d.backend.Name(), ModeReason: d.modeWhy,
		Source: "file:" + d.opts.ConfigPath, ConfigError: d.configErr, ConfigLoaded: d.configLoaded,
		DesiredGeneration: ls.DesiredGeneration, AppliedGeneration: ls.AppliedGeneration,
		LastSync: ls.LastSuccess, LastFullSync: ls.LastFull, LastSyncError: ls.LastError,
		Healthy: ok, HealthReason: why, Services: servicesStatus(ls.Applied),
	}
	d.mu.Unlock()
	if d.kube != nil {
		s.Source = "kubernetes"
		if d.kube.Stale() {
			s.HealthReason = "Kubernetes API unreachable since " + d.kube.LastContact().Format(time.RFC3339) + ": serving the last view"
		}
	}
	if ls.LastDuration > 0 {
		s.LastSyncDuration = ls.LastDuration.String()
	}
	if pods := d.pods.Load(); pods != nil {
		if u, err := pods.Status(ctx); err == nil {
			for _, r := range u.Ranges {
				s.IPAM = append(s.IPAM, api.Range{Kind: string(r.Kind), Range: r.Range, Size: r.Size, Used: r.Used, Cooling: r.CoolingDown})
			}
			for _, a := range u.Pods {
				p := api.PodIPs{Namespace: a.Owner.Namespace, Name: a.Owner.Name, ContainerID: a.Owner.ContainerID,
					IfName: a.Owner.IfName, Labels: a.Owner.Labels, Allocated: a.Allocated}
				for _, ip := range a.IPs {
					p.IPs = append(p.IPs, ip.Address.Addr().String())
				}
				s.Pods = append(s.Pods, p)
			}
		}
	}
	if d.svcs != nil {
		if u, err := d.svcs.Status(ctx); err == nil {
			for _, r := range u.Ranges {
				s.IPAM = append(s.IPAM, api.Range{Kind: string(r.Kind), Range: r.Range, Size: r.Size, Used: r.Used, Cooling: r.CoolingDown})
			}
		}
	}
	return s
}
