// Package kube is svcproxy's cluster-mode source: shared informers on Services,
// EndpointSlices, Nodes and the Pods of this node turn the Kubernetes API into the same
// *model.State the file source produces, and hand each new one to a callback. Conversion of
// one Service and its EndpointSlices is source/kubeconv's (kube-proxy's merge rules); this
// package only watches, tracks what changed, and assembles states. It never touches the
// kernel. During an API outage the informers keep their last view, so the last state stays
// in force; LastContact and Stale tell health checks how old that view is. The informers'
// list and watch calls then wait for the /readyz probe to see the API server answer (see
// apiGate) rather than retry on client-go's backoff, so they reconnect within one probe
// interval of its return.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/source/kubeconv"
)

// Defaults for Options.
const (
	DefaultProbeInterval = 5 * time.Second
	DefaultStaleAfter    = 30 * time.Second
)

// ErrNotSynced is returned (wrapped) by Run when the informers did not sync within
// Options.InitialSyncTimeout: the API was unreachable at start.
var ErrNotSynced = errors.New("Kubernetes API caches did not sync")

// Options configure a Source. NodeName is required; the CIDRs and flags are the proxy
// settings (from the ProxyConfig) copied into every State.
type Options struct {
	// NodeName is this node's name: its Node object gives Zone and PodCIDRs, and only Pods
	// scheduled to it are watched.
	NodeName string
	// ClusterCIDRs, ServiceCIDRs, NodePortAddresses and MasqueradeAll are copied into every
	// State as they are.
	ClusterCIDRs      []netip.Prefix
	ServiceCIDRs      []netip.Prefix
	NodePortAddresses []netip.Prefix
	MasqueradeAll     bool
	// PodCIDRs, when not empty, overrides this node's pod ranges; when empty they come from
	// the Node's spec.podCIDRs (set by the node IPAM controller).
	PodCIDRs []netip.Prefix
	// ResyncPeriod is the informers' resync period; 0 means none (svcproxy's sync loop has its
	// own full-resync timer).
	ResyncPeriod time.Duration
	// ProbeInterval is how often the API server's /readyz is asked while no event arrives
	// (default DefaultProbeInterval); StaleAfter is how long without any answer or event makes
	// the view stale (default DefaultStaleAfter).
	ProbeInterval time.Duration
	StaleAfter    time.Duration
	// InitialSyncTimeout bounds the wait for the first full list of every resource; 0 means
	// wait until the context ends.
	InitialSyncTimeout time.Duration
	// PodsChanged, when set, is called (from Run's goroutine, after any State of the same round
	// was delivered) whenever the Pods of this node changed; read them with Pods.
	PodsChanged func()
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now; tests replace it.
	Now func() time.Time
}

// Source watches the API and produces States. Create it with New, then call Run once.
type Source struct {
	client kubernetes.Interface
	opts   Options
	log    *slog.Logger

	svcs, slices, nodes, pods cache.SharedIndexInformer

	// gate holds the informers' list and watch calls back during an API outage and releases
	// them when the probe sees the API server answer again; see apiGate.
	gate        *apiGate
	maxGateWait time.Duration

	kick chan struct{}

	mu         sync.Mutex // guards the pending-change fields below
	dirty      map[model.ServiceKey]struct{}
	triggers   map[model.ServiceKey]time.Time
	nodesDirty bool
	podsDirty  bool

	// Owned by Run's goroutine.
	converted map[model.ServiceKey]*model.Service
	node      nodeView

	started     atomic.Bool
	synced      atomic.Bool
	nodeSeen    atomic.Bool  // this node's Node has been in the cache
	lastContact atomic.Int64 // unix nanoseconds; 0 = never
	state       atomic.Pointer[model.State]

	errMu   sync.Mutex
	lastErr error
}

// nodeView is what the State takes from Node objects.
type nodeView struct {
	zone     string
	podCIDRs []netip.Prefix
	others   []model.Node
}

const sliceServiceIndex = "service"

// New prepares informers on client for opts.NodeName; nothing is requested before Run.
func New(client kubernetes.Interface, opts Options) *Source {
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = DefaultProbeInterval
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = DefaultStaleAfter
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Source{
		client:      client,
		opts:        opts,
		log:         opts.Logger.With("source", "kubernetes"),
		kick:        make(chan struct{}, 1),
		dirty:       map[model.ServiceKey]struct{}{},
		triggers:    map[model.ServiceKey]time.Time{},
		converted:   map[model.ServiceKey]*model.Service{},
		gate:        newAPIGate(),
		maxGateWait: DefaultMaxGateWait,
	}
	// As kube-proxy: objects owned by another proxy, and the slices of headless services, are
	// filtered out by the API server.
	noProxyName, _ := labels.NewRequirement(kubeconv.LabelServiceProxyName, selection.DoesNotExist, nil)
	noHeadless, _ := labels.NewRequirement(kubeconv.LabelHeadless, selection.DoesNotExist, nil)
	selector := labels.NewSelector().Add(*noProxyName, *noHeadless).String()
	svcOpts := func(o *metav1.ListOptions) { o.LabelSelector = selector }
	podSelector := fields.OneTermEqualSelector("spec.nodeName", opts.NodeName).String()
	podOpts := func(o *metav1.ListOptions) { o.FieldSelector = podSelector }
	nsIndex := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}

	s.svcs = s.informer("services", &corev1.Service{}, nsIndex, svcOpts,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Services(metav1.NamespaceAll).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, o)
		})
	s.slices = s.informer("endpointslices", &discoveryv1.EndpointSlice{}, cache.Indexers{
		cache.NamespaceIndex: cache.MetaNamespaceIndexFunc,
		sliceServiceIndex: func(obj any) ([]string, error) {
			sl, ok := obj.(*discoveryv1.EndpointSlice)
			if !ok {
				return nil, nil
			}
			if k, ok := kubeconv.ServiceKeyOf(sl); ok {
				return []string{k.String()}, nil
			}
			return nil, nil
		},
	}, svcOpts,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o)
		})
	s.nodes = s.informer("nodes", &corev1.Node{}, cache.Indexers{}, nil,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Nodes().List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Nodes().Watch(ctx, o)
		})
	s.pods = s.informer("pods", &corev1.Pod{}, nsIndex, podOpts,
		func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
		},
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
		})

	// Errors here only mean "already started", which cannot be the case yet.
	for _, inf := range []cache.SharedIndexInformer{s.svcs, s.slices, s.nodes, s.pods} {
		_ = inf.SetTransform(trim)
		_ = inf.SetWatchErrorHandlerWithContext(s.watchError)
	}
	_, _ = s.svcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.serviceEvent(nil, obj, false) },
		UpdateFunc: func(old, obj any) { s.serviceEvent(old, obj, false) },
		DeleteFunc: func(obj any) { s.serviceEvent(nil, obj, true) },
	})
	_, _ = s.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.sliceEvent(nil, obj, false) },
		UpdateFunc: func(old, obj any) { s.sliceEvent(old, obj, false) },
		DeleteFunc: func(obj any) { s.sliceEvent(nil, obj, true) },
	})
	_, _ = s.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.noteNode(obj); s.mark(func() { s.nodesDirty = true }) },
		UpdateFunc: func(_, obj any) { s.noteNode(obj); s.mark(func() { s.nodesDirty = true }) },
		DeleteFunc: func(any) { s.mark(func() { s.nodesDirty = true }) },
	})
	_, _ = s.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.mark(func() { s.podsDirty = true }) },
		UpdateFunc: func(any, any) { s.mark(func() { s.podsDirty = true }) },
		DeleteFunc: func(any) { s.mark(func() { s.podsDirty = true }) },
	})
	return s
}

// Run starts the informers, waits for their first full lists, delivers the first State and
// then a new State after every change that alters it, until ctx ends. onChange is called from
// Run's goroutine, one call at a time; changes arriving while it runs are coalesced into the
// next call. A State handed to onChange is never modified afterwards (services that did not
// change are shared between successive States, read-only).
//
// Run returns nil when ctx ends after the first sync, an error wrapping ErrNotSynced when the
// caches did not sync within Options.InitialSyncTimeout (or before ctx ended), and an error
// when called a second time.
func (s *Source) Run(ctx context.Context, onChange func(*model.State)) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("kube source: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var running sync.WaitGroup
	defer running.Wait()
	for _, inf := range []cache.SharedIndexInformer{s.svcs, s.slices, s.nodes, s.pods} {
		running.Go(func() { inf.RunWithContext(ctx) })
	}
	var probes sync.WaitGroup
	probes.Add(1)
	go func() { defer probes.Done(); s.probe(ctx) }()
	defer probes.Wait()
	defer cancel() // runs before probes.Wait and running.Wait

	syncCtx := ctx
	if s.opts.InitialSyncTimeout > 0 {
		var c context.CancelFunc
		syncCtx, c = context.WithTimeout(ctx, s.opts.InitialSyncTimeout)
		defer c()
	}
	start := s.opts.Now()
	if !cache.WaitForCacheSync(syncCtx.Done(), s.svcs.HasSynced, s.slices.HasSynced, s.nodes.HasSynced, s.pods.HasSynced) {
		err := fmt.Errorf("%w after %s (node %s): last API error: %v", ErrNotSynced,
			s.opts.Now().Sub(start).Round(time.Millisecond), s.opts.NodeName, s.LastError())
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", err, ctx.Err())
		}
		return err
	}
	s.synced.Store(true)
	s.touch()
	s.log.Info("caches synced", "node", s.opts.NodeName, "after", s.opts.Now().Sub(start).Round(time.Millisecond))

	// First state: everything, from the caches.
	s.mu.Lock()
	s.dirty = map[model.ServiceKey]struct{}{}
	s.triggers = map[model.ServiceKey]time.Time{}
	s.nodesDirty, s.podsDirty = false, false
	s.mu.Unlock()
	for _, obj := range s.svcs.GetStore().List() {
		if svc, ok := obj.(*corev1.Service); ok {
			s.refresh(model.ServiceKey{Namespace: svc.Namespace, Name: svc.Name})
		}
	}
	s.node = s.readNodes()
	s.emit(onChange, nil)
	if s.opts.PodsChanged != nil {
		s.opts.PodsChanged()
	}

	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		}
		s.mu.Lock()
		dirty, triggers := s.dirty, s.triggers
		nodesDirty, podsDirty := s.nodesDirty, s.podsDirty
		s.dirty, s.triggers = map[model.ServiceKey]struct{}{}, map[model.ServiceKey]time.Time{}
		s.nodesDirty, s.podsDirty = false, false
		s.mu.Unlock()

		changed := map[model.ServiceKey]time.Time{}
		modified := false
		for k := range dirty {
			if s.refresh(k) {
				modified = true
				if t, ok := triggers[k]; ok {
					changed[k] = t
				}
			}
		}
		if nodesDirty {
			if nv := s.readNodes(); !reflect.DeepEqual(nv, s.node) {
				s.node = nv
				modified = true
			}
		}
		if modified {
			s.emit(onChange, changed)
		}
		if podsDirty && s.opts.PodsChanged != nil {
			s.opts.PodsChanged()
		}
	}
}

// State returns the last State delivered by Run, or nil before the first sync.
func (s *Source) State() *model.State { return s.state.Load() }

// Synced reports whether every informer has completed its first list.
func (s *Source) Synced() bool { return s.synced.Load() }

// LastContact returns when the API server was last heard from (an event, or an answer to the
// /readyz probe); zero before the first.
func (s *Source) LastContact() time.Time {
	n := s.lastContact.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Stale reports whether the view of the API is out of date: not synced yet, or nothing heard
// from the API server for longer than Options.StaleAfter. The last State stays in force
// meanwhile; this only feeds health reporting.
func (s *Source) Stale() bool {
	if !s.Synced() {
		return true
	}
	return s.opts.Now().Sub(s.LastContact()) > s.opts.StaleAfter
}

// LastError returns the last error of a list, watch or probe, or nil when the last probe
// succeeded.
func (s *Source) LastError() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr
}

// Pods returns the Pods of this node, sorted by namespace and name.
func (s *Source) Pods() []model.Pod {
	objs := s.pods.GetStore().List()
	out := make([]model.Pod, 0, len(objs))
	for _, obj := range objs {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == s.opts.NodeName {
			out = append(out, podModel(p))
		}
	}
	slices.SortFunc(out, func(a, b model.Pod) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// Pod returns the Pod namespace/name of this node, and false when it is not (yet) known.
func (s *Source) Pod(namespace, name string) (model.Pod, bool) {
	obj, ok, err := s.pods.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return model.Pod{}, false
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName != s.opts.NodeName {
		return model.Pod{}, false
	}
	return podModel(p), true
}

// PodIdentity is a pod of this node as pod IP GC matches it: by UID, by namespace/name for
// allocations recorded without one.
type PodIdentity struct {
	Namespace, Name, UID string
}

// PodIdentities returns the pods of this node (every one the cache holds, also those being
// deleted: their IPs may still be in use) with their UIDs.
func (s *Source) PodIdentities() []PodIdentity {
	objs := s.pods.GetStore().List()
	out := make([]PodIdentity, 0, len(objs))
	for _, obj := range objs {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName == s.opts.NodeName {
			out = append(out, PodIdentity{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
		}
	}
	return out
}

// PodUID returns the UID of pod namespace/name of this node, or "" when the cache does not
// hold it or holds it being deleted or terminated (then the pod a CNI ADD is for is likely a
// newer one of the same name that the cache has not seen yet).
func (s *Source) PodUID(namespace, name string) string {
	obj, ok, err := s.pods.GetStore().GetByKey(namespace + "/" + name)
	if err != nil || !ok {
		return ""
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName != s.opts.NodeName || p.DeletionTimestamp != nil ||
		p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return ""
	}
	return string(p.UID)
}

func podModel(p *corev1.Pod) model.Pod {
	m := model.Pod{
		Namespace: p.Namespace,
		Name:      p.Name,
		NodeName:  p.Spec.NodeName,
		Labels:    make(map[string]string, len(p.Labels)),
		Ready: p.DeletionTimestamp == nil &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed,
	}
	for k, v := range p.Labels {
		m.Labels[k] = v
	}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && !slices.Contains(m.IPs, a.Unmap()) {
			m.IPs = append(m.IPs, a.Unmap())
		}
	}
	return m
}

// mark records a change under the lock and wakes Run.
func (s *Source) mark(f func()) {
	s.touch()
	s.mu.Lock()
	f()
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// serviceEvent and sliceEvent mark the service(s) an event touches, and record a new
// trigger-time annotation (a deleted object's annotation is old news: not recorded).
func (s *Source) serviceEvent(old, obj any, deleted bool) {
	svc, ok := unwrap[*corev1.Service](obj)
	if !ok {
		return
	}
	key := model.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}
	var oldObj metav1.Object
	if o, ok := unwrap[*corev1.Service](old); ok {
		oldObj = o
	}
	var t time.Time
	hasT := false
	if !deleted {
		t, hasT = newTrigger(oldObj, svc)
	}
	s.mark(func() {
		s.dirty[key] = struct{}{}
		if hasT {
			s.addTrigger(key, t)
		}
	})
}

func (s *Source) sliceEvent(old, obj any, deleted bool) {
	sl, ok := unwrap[*discoveryv1.EndpointSlice](obj)
	if !ok {
		return
	}
	key, hasKey := kubeconv.ServiceKeyOf(sl)
	var (
		oldObj metav1.Object
		oldKey model.ServiceKey
		hasOld bool
	)
	if o, ok := unwrap[*discoveryv1.EndpointSlice](old); ok {
		oldObj = o
		oldKey, hasOld = kubeconv.ServiceKeyOf(o)
	}
	var t time.Time
	hasT := false
	if !deleted {
		t, hasT = newTrigger(oldObj, sl)
	}
	s.mark(func() {
		if hasKey {
			s.dirty[key] = struct{}{}
			if hasT {
				s.addTrigger(key, t)
			}
		}
		if hasOld && oldKey != key {
			s.dirty[oldKey] = struct{}{}
		}
	})
}

// addTrigger keeps the earliest pending trigger time of a service: the network programming
// latency is measured from the oldest change not yet in a State. Called with s.mu held.
func (s *Source) addTrigger(k model.ServiceKey, t time.Time) {
	if cur, ok := s.triggers[k]; !ok || t.Before(cur) {
		s.triggers[k] = t
	}
}

// newTrigger returns obj's trigger-time annotation when it is new: obj was added (old is nil),
// or its value differs from old's.
func newTrigger(old, obj metav1.Object) (time.Time, bool) {
	t, ok := kubeconv.TriggerTime(obj)
	if !ok {
		return time.Time{}, false
	}
	if old != nil {
		if ot, ok := kubeconv.TriggerTime(old); ok && ot.Equal(t) {
			return time.Time{}, false
		}
	}
	return t, true
}

// unwrap returns obj (or the last state inside a DeletedFinalStateUnknown) as a T.
func unwrap[T any](obj any) (T, bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	v, ok := obj.(T)
	return v, ok
}

// refresh converts service k again from the caches; it reports whether its model changed
// (appeared, disappeared or differs).
func (s *Source) refresh(k model.ServiceKey) bool {
	old, existed := s.converted[k]
	obj, ok, err := s.svcs.GetStore().GetByKey(k.String())
	var svc *corev1.Service
	if err == nil && ok {
		svc, _ = obj.(*corev1.Service)
	}
	if svc == nil {
		delete(s.converted, k)
		return existed
	}
	objs, _ := s.slices.GetIndexer().ByIndex(sliceServiceIndex, k.String())
	sls := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
			sls = append(sls, sl)
		}
	}
	m, ok := kubeconv.Service(svc, sls)
	if !ok {
		delete(s.converted, k)
		return existed
	}
	if existed && reflect.DeepEqual(old, m) {
		return false
	}
	s.converted[k] = m
	return true
}

// ToBeDeletedTaint is the taint the cluster autoscaler puts on a node it is about to remove;
// such a node fails /healthz (KEP-3836) so that load balancers drain it first.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

func (s *Source) noteNode(obj any) {
	if n, ok := obj.(*corev1.Node); ok && n.Name == s.opts.NodeName {
		s.nodeSeen.Store(true)
	}
}

// NodeEligible reports whether this node should receive load-balancer traffic, from its Node
// in the cache, as kube-proxy's /healthz (KEP-3836): not while the Node is being deleted
// (deletionTimestamp set) or carries the ToBeDeletedByClusterAutoscaler taint, nor once a Node
// seen before is gone. Unlike kube-proxy, a Node never seen yet (the node not registered, or
// the first list not done) counts as eligible: svcproxy serves before its Node exists.
func (s *Source) NodeEligible() (bool, string) {
	obj, found, err := s.nodes.GetStore().GetByKey(s.opts.NodeName)
	n, ok := obj.(*corev1.Node)
	if err != nil || !found || !ok {
		if s.nodeSeen.Load() {
			return false, "Node " + s.opts.NodeName + " was deleted"
		}
		return true, ""
	}
	s.nodeSeen.Store(true)
	if n.DeletionTimestamp != nil {
		return false, "Node " + s.opts.NodeName + " is being deleted (since " + n.DeletionTimestamp.UTC().Format(time.RFC3339) + ")"
	}
	for _, t := range n.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false, "Node " + s.opts.NodeName + " has the " + ToBeDeletedTaint + " taint"
		}
	}
	return true, ""
}

// readNodes derives this node's zone and pod ranges, and the list of the other nodes, from the
// Node cache. Other nodes without a usable address are left out (nothing can be routed to
// them); nodes without pod ranges are kept.
func (s *Source) readNodes() nodeView {
	var v nodeView
	for _, obj := range s.nodes.GetStore().List() {
		n, ok := obj.(*corev1.Node)
		if !ok {
			continue
		}
		if n.Name == s.opts.NodeName {
			v.zone = nodeZone(n)
			v.podCIDRs = nodePodCIDRs(n)
			continue
		}
		addr, ok := nodeAddress(n)
		if !ok {
			continue
		}
		v.others = append(v.others, model.Node{Name: n.Name, Address: addr, PodCIDRs: nodePodCIDRs(n), Zone: nodeZone(n)})
	}
	slices.SortFunc(v.others, func(a, b model.Node) int { return strings.Compare(a.Name, b.Name) })
	return v
}

func nodeZone(n *corev1.Node) string {
	if z := n.Labels[corev1.LabelTopologyZone]; z != "" {
		return z
	}
	return n.Labels[corev1.LabelFailureDomainBetaZone]
}

func nodePodCIDRs(n *corev1.Node) []netip.Prefix {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, r := range raw {
		if p, err := netip.ParsePrefix(r); err == nil && !slices.Contains(out, p.Masked()) {
			out = append(out, p.Masked())
		}
	}
	return out
}

// nodeAddress returns the node's first InternalIP, else its first ExternalIP.
func nodeAddress(n *corev1.Node) (netip.Addr, bool) {
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if a.Type != t {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				return ip.Unmap(), true
			}
		}
	}
	return netip.Addr{}, false
}

// emit assembles a State from the converted services and node view, stores it and hands it to
// onChange.
func (s *Source) emit(onChange func(*model.State), triggers map[model.ServiceKey]time.Time) {
	st := &model.State{
		NodeName:          s.opts.NodeName,
		Zone:              s.node.zone,
		ClusterCIDRs:      slices.Clone(s.opts.ClusterCIDRs),
		PodCIDRs:          slices.Clone(s.opts.PodCIDRs),
		ServiceCIDRs:      slices.Clone(s.opts.ServiceCIDRs),
		NodePortAddresses: slices.Clone(s.opts.NodePortAddresses),
		MasqueradeAll:     s.opts.MasqueradeAll,
		Nodes:             slices.Clone(s.node.others),
		Services:          make([]*model.Service, 0, len(s.converted)),
	}
	if len(st.PodCIDRs) == 0 {
		st.PodCIDRs = slices.Clone(s.node.podCIDRs)
	}
	for _, svc := range s.converted {
		st.Services = append(st.Services, svc)
	}
	slices.SortFunc(st.Services, func(a, b *model.Service) int {
		if c := strings.Compare(a.Key.Namespace, b.Key.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Key.Name, b.Key.Name)
	})
	if len(triggers) > 0 {
		st.TriggerTimes = triggers
	}
	s.state.Store(st)
	if onChange != nil {
		onChange(st)
	}
}

// probe asks /readyz every ProbeInterval, so that a quiet but healthy API is not mistaken for
// an outage.
func (s *Source) probe(ctx context.Context) {
	t := time.NewTicker(s.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !s.gate.isDown() && s.opts.Now().Sub(s.LastContact()) < s.opts.ProbeInterval {
			continue // heard from it recently
		}
		pctx, cancel := context.WithTimeout(ctx, s.opts.ProbeInterval)
		err := s.ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.setErr(err)
		if err == nil {
			s.touch()
			if s.gate.up() {
				s.log.Info("API server answers /readyz again; informers reconnect now")
			}
		} else {
			s.log.Debug("API server probe failed", "err", err)
		}
	}
}

// ping checks that the API server answers: GET /readyz (allowed to every authenticated user by
// the default system:public-info-viewer role), or GET /version for clients without a REST
// client (fakes).
func (s *Source) ping(ctx context.Context) error {
	rc := s.client.Discovery().RESTClient()
	if rc == nil || reflect.ValueOf(rc).IsNil() {
		_, err := s.client.Discovery().ServerVersion()
		return err
	}
	body, err := rc.Get().AbsPath("/readyz").DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("GET /readyz: %w", err)
	}
	if string(body) != "ok" {
		return fmt.Errorf("GET /readyz: %q", body)
	}
	return nil
}

// setErr records err as the last error (nil: the last probe succeeded).
func (s *Source) setErr(err error) {
	s.errMu.Lock()
	s.lastErr = err
	s.errMu.Unlock()
}

// informer makes the shared informer of one resource (all namespaces), whose list and watch
// calls, with tweak applied to their options, go through the gate.
func (s *Source) informer(resource string, example runtime.Object, indexers cache.Indexers, tweak func(*metav1.ListOptions),
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if tweak != nil {
				tweak(&o)
			}
			return gated(ctx, s, "listing "+resource, func(ctx context.Context) (runtime.Object, error) { return list(ctx, o) })
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			if tweak != nil {
				tweak(&o)
			}
			return gated(ctx, s, "watching "+resource, func(ctx context.Context) (watch.Interface, error) { return watchFn(ctx, o) })
		},
	}
	return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, s.client), example,
		cache.SharedIndexInformerOptions{ResyncPeriod: s.opts.ResyncPeriod, Indexers: indexers, ObjectDescription: resource})
}

func (s *Source) touch() { s.lastContact.Store(s.opts.Now().UnixNano()) }

func (s *Source) watchError(ctx context.Context, r *cache.Reflector, err error) {
	if ctx.Err() != nil {
		return // shutting down
	}
	s.setErr(fmt.Errorf("watching %s: %w", r.TypeDescription(), err))
	s.log.Warn("watch failed; retrying", "resource", r.TypeDescription(), "err", err)
	cache.DefaultWatchErrorHandler(ctx, r, err)
}

// trim drops what svcproxy never reads from the cached objects (managed fields, node images,
// most of a pod's spec), which is most of their memory in large clusters.
func trim(obj any) (any, error) {
	if m, ok := obj.(metav1.ObjectMetaAccessor); ok && m.GetObjectMeta() != nil {
		m.GetObjectMeta().SetManagedFields(nil)
	}
	switch o := obj.(type) {
	case *corev1.Node:
		o.Status.Images = nil
		o.Status.VolumesInUse = nil
		o.Status.VolumesAttached = nil
		o.Status.Conditions = nil
	case *corev1.Pod:
		o.Spec = corev1.PodSpec{NodeName: o.Spec.NodeName, HostNetwork: o.Spec.HostNetwork}
		o.Status = corev1.PodStatus{Phase: o.Status.Phase, PodIP: o.Status.PodIP, PodIPs: o.Status.PodIPs}
	}
	return obj, nil
}
