package daemon

import (
	"context"
	"log/slog"

	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/source/kube"
)

// podGCView is what cluster-mode pod GC needs from the Kubernetes source.
type podGCView interface {
	// Stale reports whether the view of the API is out of date (not synced, or nothing heard
	// from the API server for a while).
	Stale() bool
	// PodIdentities returns the pods of this node.
	PodIdentities() []kube.PodIdentity
}

// podGCTracker returns the daemon's cluster pod GC tracker, with grace podGCGracePeriod
// (0: ipam.DefaultPodGCGrace) on the monotonic clock.
func (d *Daemon) podGCTracker() *ipam.GCTracker {
	d.podGCOnce.Do(func() { d.podGC = ipam.NewGCTracker(d.cfg.PodGCGracePeriod, nil) })
	return d.podGC
}

// clusterPodGC frees the pod IPs of pods gone from the API, under tr's policy (ipam.Collect):
// a pod must be missing at every pass for the grace period, measured on the monotonic clock;
// at most half of the allocations go per pass. An allocation with a pod UID is live while a
// pod with that UID is on this node (a pod recreated under the same name is another pod); one
// without UID (recorded before UIDs were kept) while a pod of that namespace/name is; one
// without pod name (not from Kubernetes) is never freed here. While the view is stale nothing
// is freed and every missing mark is dropped, so the grace starts over once it is fresh.
func clusterPodGC(ctx context.Context, a *ipam.PodAllocator, tr *ipam.GCTracker, v podGCView, log *slog.Logger) []ipam.PodAllocation {
	if v.Stale() {
		tr.Reset()
		log.Debug("pod GC: skipped, the view of the API is stale")
		return nil
	}
	uids := map[string]bool{}
	names := map[[2]string]bool{}
	for _, p := range v.PodIdentities() {
		if p.UID != "" {
			uids[p.UID] = true
		}
		names[[2]string{p.Namespace, p.Name}] = true
	}
	present := func(al ipam.PodAllocation) bool {
		o := al.Owner
		switch {
		case o.UID != "":
			return uids[o.UID]
		case o.Name == "":
			return true
		}
		return names[[2]string{o.Namespace, o.Name}]
	}
	freed, err := a.Collect(ctx, tr, present)
	if err != nil {
		log.Error("pod GC", "err", err)
		return nil
	}
	for _, f := range freed {
		o := f.Owner
		log.Info("pod GC: freed the IPs of a pod that no longer exists", "pod", o.Namespace+"/"+o.Name, "uid", o.UID, "container", o.ContainerID)
	}
	return freed
}
