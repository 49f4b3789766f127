// Package kubeconv converts Kubernetes Service and EndpointSlice objects into the proxy's
// model, the way kube-proxy reads them: slices are merged per service, endpoints are matched to
// service ports by port name and protocol, endpoint conditions and topology hints are kept, and
// services kube-proxy would not proxy (headless, ExternalName, owned by another proxy) are
// skipped. It is pure: no API calls, no clock, no kernel. Both the Kubernetes informer source
// and the config file (for the Kubernetes documents it may hold) use it.
package kubeconv

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Well-known labels and annotations read by the conversion.
const (
	// LabelServiceProxyName marks a Service or EndpointSlice handled by another proxy;
	// kube-proxy (and svcproxy) ignore objects carrying it.
	LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"
	// LabelHeadless marks the EndpointSlices of a headless service.
	LabelHeadless = corev1.IsHeadlessService
	// LabelServiceName names the Service an EndpointSlice belongs to.
	LabelServiceName = discoveryv1.LabelServiceName
	// AnnotationTriggerTime records when the change that produced an EndpointSlice happened.
	AnnotationTriggerTime = corev1.EndpointsLastChangeTriggerTime
	// AnnotationTopologyMode (and its deprecated predecessor AnnotationTopologyAwareHints)
	// enable topology aware routing from before trafficDistribution existed.
	AnnotationTopologyMode       = "service.kubernetes.io/topology-mode"
	AnnotationTopologyAwareHints = "service.kubernetes.io/topology-aware-hints"
	// AnnotationLBSourceRanges is the legacy spelling of spec.loadBalancerSourceRanges.
	AnnotationLBSourceRanges = corev1.AnnotationLoadBalancerSourceRangesKey
)

// DefaultAffinityTimeout is the ClientIP session affinity timeout when the Service sets none.
const DefaultAffinityTimeout = 10800 * time.Second

// Service converts svc and the EndpointSlices that belong to it into a model.Service. slices may
// hold slices of other services too (they are ignored: a slice belongs to svc when it is in the
// same namespace and its kubernetes.io/service-name label names svc) and may be nil.
//
// It returns false when kube-proxy would not proxy the service: ExternalName or headless
// services, services without a valid cluster IP, and services labelled
// service.kubernetes.io/service-proxy-name. Slices labelled with that label, FQDN slices and
// slices of an IP family the service does not have are ignored. Values that do not parse (an IP
// address, a port out of range) are skipped one by one, as kube-proxy does, so one bad
// entry never hides the rest of the service.
func Service(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) (*model.Service, bool) {
	if svc == nil || !Proxyable(svc) {
		return nil, false
	}
	out := &model.Service{
		Key:  model.ServiceKey{Namespace: svc.Namespace, Name: svc.Name},
		Type: serviceType(svc.Spec.Type),
	}
	for _, s := range clusterIPStrings(svc) {
		if a, ok := parseAddr(s); ok && !slicesContains(out.ClusterIPs, a) {
			out.ClusterIPs = append(out.ClusterIPs, a)
		}
	}
	if len(out.ClusterIPs) == 0 {
		return nil, false
	}
	fam := families(out.ClusterIPs)
	for _, s := range svc.Spec.ExternalIPs {
		if a, ok := parseAddr(s); ok && fam.has(a) && !slicesContains(out.ExternalIPs, a) {
			out.ExternalIPs = append(out.ExternalIPs, a)
		}
	}
	if out.Type == model.LoadBalancer {
		for _, s := range loadBalancerIPStrings(svc) {
			if a, ok := parseAddr(s); ok && fam.has(a) && !slicesContains(out.LoadBalancerIPs, a) {
				out.LoadBalancerIPs = append(out.LoadBalancerIPs, a)
			}
		}
		out.LoadBalancerSourceRanges = SourceRanges(svc)
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		out.AffinityTimeout = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			out.AffinityTimeout = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	out.ExternalTrafficPolicyLocal = svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	out.InternalTrafficPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	if out.Type == model.LoadBalancer && out.ExternalTrafficPolicyLocal {
		if p := svc.Spec.HealthCheckNodePort; p > 0 && p <= 65535 {
			out.HealthCheckNodePort = uint16(p)
		}
	}
	out.TrafficDistribution = trafficDistribution(svc)

	mine := ownSlices(svc, slices, fam)
	for _, sp := range svc.Spec.Ports {
		if sp.Port <= 0 || sp.Port > 65535 {
			continue
		}
		p := model.ServicePort{Name: sp.Name, Protocol: protocol(sp.Protocol), Port: uint16(sp.Port)}
		if out.Type != model.ClusterIP && sp.NodePort > 0 && sp.NodePort <= 65535 {
			p.NodePort = uint16(sp.NodePort)
		}
		if !validProtocol(p.Protocol) {
			continue
		}
		p.Endpoints = portEndpoints(mine, p.Name, p.Protocol)
		out.Ports = append(out.Ports, p)
	}
	return out, true
}

// Proxyable reports whether kube-proxy would proxy svc at all: not ExternalName, not headless,
// with a cluster IP set, and not labelled for another proxy.
func Proxyable(svc *corev1.Service) bool {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return false
	}
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return false
	}
	if _, ok := svc.Labels[LabelHeadless]; ok {
		return false
	}
	ips := clusterIPStrings(svc)
	return len(ips) > 0 && ips[0] != "" && ips[0] != corev1.ClusterIPNone
}

// BelongsTo reports whether slice is one of the EndpointSlices svcproxy reads for the service
// namespace/name: same namespace, kubernetes.io/service-name label naming it, and neither the
// service-proxy-name nor the headless label (kube-proxy's informers filter both out).
func BelongsTo(slice *discoveryv1.EndpointSlice, namespace, name string) bool {
	if slice == nil || slice.Namespace != namespace || slice.Labels[LabelServiceName] != name {
		return false
	}
	_, other := slice.Labels[LabelServiceProxyName]
	_, headless := slice.Labels[LabelHeadless]
	return !other && !headless
}

// ServiceKeyOf returns the key of the service an EndpointSlice belongs to; false when the slice
// carries no kubernetes.io/service-name label.
func ServiceKeyOf(slice *discoveryv1.EndpointSlice) (model.ServiceKey, bool) {
	name := slice.Labels[LabelServiceName]
	if name == "" {
		return model.ServiceKey{}, false
	}
	return model.ServiceKey{Namespace: slice.Namespace, Name: name}, true
}

// TriggerTime returns the time recorded in obj's endpoints.kubernetes.io/last-change-trigger-time
// annotation (set by the EndpointSlice controller on slices, and accepted on Services too), and
// false when the annotation is absent or does not parse as RFC 3339.
func TriggerTime(obj metav1.Object) (time.Time, bool) {
	if obj == nil {
		return time.Time{}, false
	}
	v, ok := obj.GetAnnotations()[AnnotationTriggerTime]
	if !ok || v == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// LatestTriggerTime returns the latest trigger time over slices (see TriggerTime), and false
// when none carries one.
func LatestTriggerTime(slices []*discoveryv1.EndpointSlice) (time.Time, bool) {
	var latest time.Time
	found := false
	for _, s := range slices {
		if s == nil {
			continue
		}
		if t, ok := TriggerTime(s); ok && (!found || t.After(latest)) {
			latest, found = t, true
		}
	}
	return latest, found
}

// SourceRanges returns the valid CIDRs of svc's loadBalancerSourceRanges, or of the legacy
// service.beta.kubernetes.io/load-balancer-source-ranges annotation when the field is empty.
// Entries are trimmed of spaces; invalid ones are skipped.
func SourceRanges(svc *corev1.Service) []netip.Prefix {
	raw := svc.Spec.LoadBalancerSourceRanges
	if len(raw) == 0 {
		if a := svc.Annotations[AnnotationLBSourceRanges]; a != "" {
			raw = strings.Split(a, ",")
		}
	}
	var out []netip.Prefix
	for _, r := range raw {
		p, err := netip.ParsePrefix(strings.TrimSpace(r))
		if err != nil {
			continue
		}
		p = p.Masked()
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func serviceType(t corev1.ServiceType) model.ServiceType {
	switch t {
	case corev1.ServiceTypeNodePort:
		return model.NodePort
	case corev1.ServiceTypeLoadBalancer:
		return model.LoadBalancer
	default:
		return model.ClusterIP
	}
}

func protocol(p corev1.Protocol) model.Protocol {
	if p == "" {
		return model.TCP
	}
	return model.Protocol(p)
}

func validProtocol(p model.Protocol) bool {
	return p == model.TCP || p == model.UDP || p == model.SCTP
}

func clusterIPStrings(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	if svc.Spec.ClusterIP != "" {
		return []string{svc.Spec.ClusterIP}
	}
	return nil
}

// loadBalancerIPStrings returns spec.loadBalancerIP and the IPs of the status ingresses in VIP
// mode (a Proxy-mode ingress delivers traffic to the node's address, not to the VIP).
func loadBalancerIPStrings(svc *corev1.Service) []string {
	var out []string
	if svc.Spec.LoadBalancerIP != "" {
		out = append(out, svc.Spec.LoadBalancerIP)
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != corev1.LoadBalancerIPModeVIP) {
			continue
		}
		out = append(out, ing.IP)
	}
	return out
}

func trafficDistribution(svc *corev1.Service) string {
	if td := svc.Spec.TrafficDistribution; td != nil && *td != "" {
		return *td
	}
	// Topology aware hints from before trafficDistribution: the EndpointSlice controller sets
	// zone hints, which kube-proxy honours; PreferClose is the equivalent distribution.
	for _, k := range []string{AnnotationTopologyMode, AnnotationTopologyAwareHints} {
		if v := strings.ToLower(svc.Annotations[k]); v != "" && v != "disabled" {
			return corev1.ServiceTrafficDistributionPreferClose
		}
	}
	return ""
}

// parseAddr parses an IP address the way kube-proxy's sloppy parser accepts them (IPv4 with
// leading zeros is rejected by netip; such addresses never pass API validation anyway) and
// drops any IPv6 zone.
func parseAddr(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

type familySet struct{ v4, v6 bool }

func families(ips []netip.Addr) familySet {
	var f familySet
	for _, a := range ips {
		if a.Is4() {
			f.v4 = true
		} else {
			f.v6 = true
		}
	}
	return f
}

func (f familySet) has(a netip.Addr) bool {
	if a.Is4() {
		return f.v4
	}
	return f.v6
}

func (f familySet) hasType(t discoveryv1.AddressType) bool {
	switch t {
	case discoveryv1.AddressTypeIPv4:
		return f.v4
	case discoveryv1.AddressTypeIPv6:
		return f.v6
	}
	return false
}

// ownSlices keeps the slices of svc that carry addresses of one of its families, sorted by
// name so that the merge is deterministic.
func ownSlices(svc *corev1.Service, all []*discoveryv1.EndpointSlice, fam familySet) []*discoveryv1.EndpointSlice {
	var out []*discoveryv1.EndpointSlice
	for _, s := range all {
		if BelongsTo(s, svc.Namespace, svc.Name) && fam.hasType(s.AddressType) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// portEndpoints collects, over every slice, the endpoints of the slice ports named name with
// protocol proto. An endpoint (address and port) listed twice keeps its first occurrence unless
// a later one is ready and the first is not.
func portEndpoints(slices []*discoveryv1.EndpointSlice, name string, proto model.Protocol) []model.Endpoint {
	var out []model.Endpoint
	index := map[netip.AddrPort]int{}
	for _, sl := range slices {
		for _, sp := range sl.Ports {
			if sp.Port == nil || *sp.Port <= 0 || *sp.Port > 65535 {
				continue
			}
			pn := ""
			if sp.Name != nil {
				pn = *sp.Name
			}
			pp := model.TCP
			if sp.Protocol != nil && *sp.Protocol != "" {
				pp = model.Protocol(*sp.Protocol)
			}
			if pn != name || pp != proto {
				continue
			}
			for i := range sl.Endpoints {
				e, ok := endpoint(&sl.Endpoints[i], sl.AddressType, uint16(*sp.Port))
				if !ok {
					continue
				}
				if j, dup := index[e.AddrPort()]; dup {
					if !out[j].Ready && e.Ready {
						out[j] = e
					}
					continue
				}
				index[e.AddrPort()] = len(out)
				out = append(out, e)
			}
		}
	}
	sortEndpoints(out)
	return out
}

// endpoint converts one slice endpoint; as kube-proxy, only its first address is used.
func endpoint(ep *discoveryv1.Endpoint, t discoveryv1.AddressType, port uint16) (model.Endpoint, bool) {
	if len(ep.Addresses) == 0 {
		return model.Endpoint{}, false
	}
	a, ok := parseAddr(ep.Addresses[0])
	if !ok || (t == discoveryv1.AddressTypeIPv4) != a.Is4() {
		return model.Endpoint{}, false
	}
	c := ep.Conditions
	ready := c.Ready == nil || *c.Ready
	serving := ready
	if c.Serving != nil {
		serving = *c.Serving
	}
	e := model.Endpoint{
		IP:          a,
		Port:        port,
		Ready:       ready,
		Serving:     serving,
		Terminating: c.Terminating != nil && *c.Terminating,
	}
	if ep.NodeName != nil {
		e.NodeName = *ep.NodeName
	}
	if ep.Zone != nil {
		e.Zone = *ep.Zone
	}
	if ep.Hints != nil {
		for _, z := range ep.Hints.ForZones {
			e.ZoneHints = append(e.ZoneHints, z.Name)
		}
		for _, n := range ep.Hints.ForNodes {
			e.NodeHints = append(e.NodeHints, n.Name)
		}
	}
	return e, true
}

func sortEndpoints(eps []model.Endpoint) {
	slices.SortFunc(eps, func(a, b model.Endpoint) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
}

func slicesContains[T comparable](s []T, v T) bool { return slices.Contains(s, v) }
