package daemon

import (
	"context"
	"net/http"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
)

func (d *Daemon) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.Handler())
	return mux
}

// healthHandler serves /healthz (last sync good, none overdue), /livez and /readyz (a first
// sync succeeded). In cluster mode an API outage does not fail them (the rules stay right as of
// the last view, and failing every node at once would empty load balancers); the body says
// the view is stale.
func (d *Daemon) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := d.loop.Healthy()
		d.writeHealth(w, ok, why)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) { d.writeHealth(w, true, "") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := d.loop.Healthy()
		if !d.loop.Ready() {
			ok, why = false, "no sync has succeeded yet"
		}
		d.writeHealth(w, ok, why)
	})
	return mux
}

// proxyLive is the proxy's health for the health-check node ports (serviceProxyHealthy).
func (d *Daemon) proxyLive() bool {
	ok, _ := d.loop.Live()
	return ok
}

func (d *Daemon) writeHealth(w http.ResponseWriter, ok bool, why string) {
	s := d.loop.Status()
	body := map[string]any{"lastUpdated": s.LastSuccess, "currentTime": time.Now(), "nodeName": d.cfg.NodeName, "mode": d.backend.Name()}
	if d.kube != nil {
		body["apiLastContact"] = d.kube.LastContact()
		if d.kube.Stale() {
			body["apiStale"] = true
			if err := d.kube.LastError(); err != nil {
				body["apiError"] = err.Error()
			}
		}
	}
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
		body["reason"] = why
	}
	api.WriteJSON(w, code, body)
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
