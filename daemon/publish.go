package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam/podadapter"
	"github.com/svcproxy/svcproxy/proxy/healthcheck"
	"github.com/svcproxy/svcproxy/proxy/healthserver"
	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/proxy/routes"
	"github.com/svcproxy/svcproxy/source/file"
)

// runFileSource feeds the daemon from the config file until ctx ends; SIGHUP forces a reload.
func (d *Daemon) runFileSource(ctx context.Context) error {
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				d.log.Info("SIGHUP: reloading the config file", "file", d.opts.ConfigPath)
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	opts := file.Options{Reload: reload, Logger: d.log, Initial: d.cfg, InitialData: d.cfgData}
	d.cfgData = nil
	return file.Watch(ctx, d.opts.ConfigPath, opts, func(cfg *config.Config, err error) {
		d.onConfig(ctx, cfg, err)
	})
}

// onConfig applies a newly loaded config file, or records why it was refused. A refused file
// changes nothing: the last good state stays programmed.
func (d *Daemon) onConfig(ctx context.Context, cfg *config.Config, err error) {
	if err == nil {
		err = applyOverrides(cfg, d.opts)
	}
	var st *model.State
	allocatorAsked := false
	if err == nil {
		allocatorAsked = true
		st, err = cfg.BuildState(d.cfg.NodeName, d.podList(ctx), d.svcs)
	}
	d.mu.Lock()
	last := d.lastCfg
	if err != nil {
		d.configErr = err.Error()
		d.mu.Unlock()
		d.metrics.ConfigReloadFailures.Inc()
		d.log.Error("config refused; the last good state stays programmed", "file", d.opts.ConfigPath, "err", err)
		if last != nil && allocatorAsked {
			// BuildState told the allocator which services the refused file holds; building the
			// last good config again tells it the truth, so no live service starts its grace period.
			d.requestRepublish()
		}
		return
	}
	d.configErr = ""
	d.configLoaded = time.Now()
	d.lastCfg = cfg
	d.mu.Unlock()
	d.metrics.ConfigReloads.Inc()
	if last != nil && settingsNeedRestart(last, cfg) {
		d.log.Warn("config changes settings that are read only at start (mode, stateDir, apiSocket, bind addresses, bridge, pod range, ebpf); restart the daemon to apply them")
	}
	d.log.Info("config loaded", "file", d.opts.ConfigPath, "services", len(st.Services), "endpoints", st.EndpointCount())
	d.publish(ctx, st, d.configLoaded)
}

func settingsNeedRestart(a, b *config.Config) bool {
	return a.Mode != b.Mode || a.StateDir != b.StateDir || a.APISocket != b.APISocket ||
		a.MetricsBindAddress != b.MetricsBindAddress || a.HealthzBindAddress != b.HealthzBindAddress ||
		a.Bridge != b.Bridge || a.EBPFPinPath != b.EBPFPinPath || a.EBPFCgroupPath != b.EBPFCgroupPath ||
		!samePrefixes(a.PodCIDRsFor(a.NodeName), b.PodCIDRsFor(b.NodeName))
}

// requestRepublish asks the publisher to rebuild the state (pods or endpoint health changed,
// or the Kubernetes source has news). It never blocks.
func (d *Daemon) requestRepublish() {
	select {
	case d.republish <- struct{}{}:
	default:
	}
}

// runPublisher rebuilds and publishes the state whenever asked, until ctx ends.
func (d *Daemon) runPublisher(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.republish:
		}
		now := time.Now()
		if d.kube != nil {
			if st := d.kube.State(); st != nil {
				if len(st.PodCIDRs) > 0 {
					if err := d.ensurePodAllocator(st.PodCIDRs); err != nil {
						d.log.Error("pod IPAM", "err", err)
					}
				}
				d.publish(ctx, st, now)
			}
			continue
		}
		d.mu.Lock()
		cfg := d.lastCfg
		d.mu.Unlock()
		if cfg == nil {
			continue
		}
		st, err := cfg.BuildState(d.cfg.NodeName, d.podList(ctx), d.svcs)
		if err != nil {
			d.log.Error("rebuilding the state of the last good config failed; the programmed state stays", "err", err)
			continue
		}
		d.publish(ctx, st, now)
	}
}

// publish completes st (endpoint health, trigger times), programs the parts the daemon owns
// (routes, health-check node ports) and hands st to the sync loop.
func (d *Daemon) publish(ctx context.Context, st *model.State, trigger time.Time) {
	if d.kube == nil {
		d.mu.Lock()
		cfg := d.lastCfg
		d.mu.Unlock()
		if cfg != nil {
			specs := healthSpecs(cfg)
			d.checker.Set(healthcheck.Targets(st, specs))
			d.checker.Apply(st, specs)
		}
	}
	if st.TriggerTimes == nil {
		st.TriggerTimes = map[model.ServiceKey]time.Time{}
	}
	for _, s := range st.Services {
		if _, ok := st.TriggerTimes[s.Key]; !ok {
			st.TriggerTimes[s.Key] = trigger
		}
	}
	if _, err := d.routes.Sync(ctx, routes.Desired(st)); err != nil {
		d.log.Error("routes to other nodes' pod ranges", "err", err)
	}
	if err := d.hcnp.Sync(healthserver.Want(st)); err != nil {
		d.log.Error("health check node ports", "err", err)
	}
	gen := d.loop.Update(st)
	d.log.Debug("state published", "generation", gen, "services", len(st.Services), "endpoints", st.EndpointCount())
}

func healthSpecs(cfg *config.Config) map[model.ServiceKey]healthcheck.Spec {
	hcs := cfg.HealthChecks()
	if len(hcs) == 0 {
		return nil
	}
	out := make(map[model.ServiceKey]healthcheck.Spec, len(hcs))
	for k, h := range hcs {
		out[k] = healthcheck.Spec{Type: h.Type, Port: h.Port, Path: h.Path, Interval: h.Interval, Timeout: h.Timeout,
			HealthyThreshold: h.HealthyThreshold, UnhealthyThreshold: h.UnhealthyThreshold}
	}
	return out
}

// podList returns the pods registered through svcproxy-cni on this node.
func (d *Daemon) podList(ctx context.Context) []model.Pod {
	a := d.pods.Load()
	if a == nil {
		return nil
	}
	pods, err := a.Pods(ctx)
	if err != nil {
		d.log.Error("listing pods from IPAM", "err", err)
	}
	return pods
}

// notifyingIPAM tells the daemon when pods come and go, so selector endpoints follow them.
type notifyingIPAM struct {
	podserver.PodIPAM
	changed func()
}

func (n notifyingIPAM) Allocate(ctx context.Context, p podserver.Pod) ([]netip.Addr, error) {
	a, err := n.PodIPAM.Allocate(ctx, p)
	if err == nil {
		n.changed()
	}
	return a, err
}

func (n notifyingIPAM) Release(ctx context.Context, a podserver.Attachment) error {
	err := n.PodIPAM.Release(ctx, a)
	n.changed()
	return err
}

func (n notifyingIPAM) GC(ctx context.Context, valid []podserver.Attachment) ([]podserver.Released, error) {
	r, err := n.PodIPAM.GC(ctx, valid)
	if len(r) > 0 {
		n.changed()
	}
	return r, err
}

// runPodGC frees the pod IPs whose pod no longer exists on this node, every minute (or every
// half podGCGracePeriod when that is shorter). See clusterPodGC for the policy.
func (d *Daemon) runPodGC(ctx context.Context) error {
	every := time.Minute
	if g := d.cfg.PodGCGracePeriod / 2; g > 0 && g < every {
		every = g
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.gcPods(ctx)
		}
	}
}

// gcPods frees pod IPs whose pod (by UID) has been gone from the API for podGCGracePeriod on
// the monotonic clock (cluster mode; nothing while the API view is stale), at most half of the
// allocations per pass.
func (d *Daemon) gcPods(ctx context.Context) {
	pods := d.pods.Load()
	if pods == nil || d.kube == nil {
		return
	}
	if len(clusterPodGC(ctx, pods, d.podGCTracker(), d.kube, d.log)) > 0 {
		d.requestRepublish()
	}
}

func samePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// errPodRangeUnknown answers pod calls that arrive before this node's pod range is known.
var errPodRangeUnknown = fmt.Errorf("this node's pod range is not known yet (no podCIDR in the config, or the Node's spec.podCIDRs not seen yet): %w", podserver.ErrNotReady)

// lazyPodIPAM serves the pod API from the pod allocator once it exists.
type lazyPodIPAM struct{ d *Daemon }

func (l lazyPodIPAM) get() (podadapter.Adapter, error) {
	a := l.d.pods.Load()
	if a == nil {
		return podadapter.Adapter{}, errPodRangeUnknown
	}
	return podadapter.New(a), nil
}

func (l lazyPodIPAM) Allocate(ctx context.Context, p podserver.Pod) ([]netip.Addr, error) {
	a, err := l.get()
	if err != nil {
		return nil, err
	}
	if p.UID == "" && p.Name != "" && l.d.kube != nil {
		// The runtime passed no K8S_POD_UID: record the UID the API view has for the pod (none
		// when the cache holds it being deleted: then the ADD is likely for a newer pod of the
		// same name), so that cluster GC matches the allocation by UID.
		p.UID = l.d.kube.PodUID(p.Namespace, p.Name)
	}
	return a.Allocate(ctx, p)
}

func (l lazyPodIPAM) Release(ctx context.Context, at podserver.Attachment) error {
	a, err := l.get()
	if err != nil {
		return err
	}
	return a.Release(ctx, at)
}

func (l lazyPodIPAM) Check(ctx context.Context, at podserver.Attachment) ([]netip.Addr, error) {
	a, err := l.get()
	if err != nil {
		return nil, err
	}
	return a.Check(ctx, at)
}

func (l lazyPodIPAM) GC(ctx context.Context, valid []podserver.Attachment) ([]podserver.Released, error) {
	a, err := l.get()
	if err != nil {
		return nil, err
	}
	return a.GC(ctx, valid)
}

func (l lazyPodIPAM) Ready(ctx context.Context) error {
	a, err := l.get()
	if err != nil {
		return err
	}
	return a.Ready(ctx)
}
