package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/source/kubeconv"
)

// BuildState returns the desired state of node nodeName ("" = the config's nodeName): the
// settings, the other nodes, and every proxied service with its endpoints. A service's
// endpoints are its static endpoints, the pods whose labels match its selector (same
// namespace, Ready, addresses of the service's families; the target port must be a number),
// and the EndpointSlice documents that name it.
//
// VIPs, node ports and health-check node ports the file leaves unset come from alloc, and the
// ones it sets are reserved through it. BuildState first calls alloc.Retain with every service
// of the file, so that what removed services held can be released. It returns an *Error when
// alloc refuses a request (for example a clusterIP already held by another service), naming
// the field at fault; the state is then nil.
func (c *Config) BuildState(nodeName string, pods []model.Pod, alloc Allocator) (*model.State, error) {
	if alloc == nil {
		return nil, errors.New("config: BuildState needs an Allocator")
	}
	if nodeName == "" {
		nodeName = c.NodeName
	}
	st := &model.State{
		NodeName:          nodeName,
		Zone:              c.ZoneFor(nodeName),
		ClusterCIDRs:      clonePrefixes(c.ClusterCIDRs),
		PodCIDRs:          clonePrefixes(c.PodCIDRsFor(nodeName)),
		ServiceCIDRs:      clonePrefixes(c.ServiceCIDRs),
		NodePortAddresses: clonePrefixes(c.NodePortAddresses),
		MasqueradeAll:     c.MasqueradeAll,
	}
	zones := map[string]string{nodeName: st.Zone}
	for _, n := range c.Nodes {
		if n.Name == nodeName {
			continue
		}
		n.PodCIDRs = clonePrefixes(n.PodCIDRs)
		st.Nodes = append(st.Nodes, n)
		zones[n.Name] = n.Zone
	}
	if r, ok := alloc.(interface{ useNodePortRange(PortRange) }); ok {
		r.useNodePortRange(c.NodePortRange)
	}
	alloc.Retain(c.ServiceKeys())

	slicesOf := map[model.ServiceKey][]*discoveryv1.EndpointSlice{}
	for _, s := range c.slices {
		if k, ok := kubeconv.ServiceKeyOf(s.slice); ok {
			slicesOf[k] = append(slicesOf[k], s.slice)
		}
	}
	var probs []Problem
	for _, e := range c.services {
		svc, ok := c.allocate(e, alloc, &probs)
		if !ok {
			continue
		}
		slices := append([]*discoveryv1.EndpointSlice(nil), slicesOf[e.key]...)
		if t, ok := kubeconv.LatestTriggerTime(slices); ok {
			if st.TriggerTimes == nil {
				st.TriggerTimes = map[model.ServiceKey]time.Time{}
			}
			st.TriggerTimes[e.key] = t
		}
		slices = append(slices, syntheticSlices(svc, "static", e.static)...)
		slices = append(slices, syntheticSlices(svc, "pods", podEndpoints(svc, pods, zones))...)
		if ms, ok := kubeconv.Service(svc, slices); ok {
			st.Services = append(st.Services, ms)
		}
	}
	if len(probs) > 0 {
		sortProblems(&probs)
		return nil, &Error{Problems: probs}
	}
	st.Sort()
	return st, nil
}

// allocate returns a copy of e's service with its VIPs and node ports filled in from alloc. It
// returns false when the service is not proxied (ExternalName, headless) or when alloc
// refused a request (recorded in probs).
func (c *Config) allocate(e *entry, alloc Allocator, probs *[]Problem) (*corev1.Service, bool) {
	if e.svc.Spec.Type == corev1.ServiceTypeExternalName || !kubeconvProxyableIgnoringVIP(e.svc) {
		return nil, false
	}
	svc := e.svc.DeepCopy()
	spec := &svc.Spec
	before := len(*probs)
	fail := func(path string, err error) {
		at := e.d.where(path)
		*probs = append(*probs, Problem{File: e.d.file, Line: at.line, Column: at.col, Field: path, Message: err.Error()})
	}
	if len(spec.ClusterIPs) == 0 {
		for _, pf := range e.allocFrom {
			ip, err := alloc.ServiceIP(e.key, pf, netip.Addr{})
			if err != nil {
				fail(e.p("spec.clusterIP"), fmt.Errorf("allocating a VIP from %s: %w", pf, err))
				continue
			}
			spec.ClusterIPs = append(spec.ClusterIPs, ip.String())
		}
	} else {
		for i, s := range spec.ClusterIPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			for _, pf := range c.ServiceCIDRs {
				if pf.Contains(a) {
					if _, err := alloc.ServiceIP(e.key, pf, a); err != nil {
						fail(e.vipPaths[i], fmt.Errorf("reserving VIP %s: %w", a, err))
					}
				}
			}
		}
	}
	if len(spec.ClusterIPs) > 0 {
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	if spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer {
		noLBPorts := spec.Type == corev1.ServiceTypeLoadBalancer && spec.AllocateLoadBalancerNodePorts != nil && !*spec.AllocateLoadBalancerNodePorts
		for j := range spec.Ports {
			sp := &spec.Ports[j]
			if sp.NodePort == 0 && noLBPorts {
				continue
			}
			key := model.PortKey{Service: e.key, Port: sp.Name, Protocol: model.Protocol(sp.Protocol)}
			np, err := alloc.NodePort(key, uint16(sp.NodePort))
			if err != nil {
				fail(e.p(index("spec.ports", j)+".nodePort"), fmt.Errorf("node port: %w", err))
				continue
			}
			sp.NodePort = int32(np)
		}
		if spec.Type == corev1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal {
			hc, err := alloc.HealthCheckNodePort(e.key, uint16(spec.HealthCheckNodePort))
			if err != nil {
				fail(e.p("spec.healthCheckNodePort"), fmt.Errorf("health-check node port: %w", err))
			} else {
				spec.HealthCheckNodePort = int32(hc)
			}
		}
	}
	return svc, len(*probs) == before
}

// allocPaths returns every path allocate may report a problem at for e (Parse keeps their
// positions when it lets go of the file's node tree).
func (e *entry) allocPaths() []string {
	spec := &e.svc.Spec
	var paths []string
	if len(spec.ClusterIPs) == 0 {
		paths = append(paths, e.p("spec.clusterIP"))
	} else {
		paths = append(paths, e.vipPaths...)
	}
	if spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer {
		for j := range spec.Ports {
			paths = append(paths, e.p(index("spec.ports", j)+".nodePort"))
		}
	}
	if spec.Type == corev1.ServiceTypeLoadBalancer {
		paths = append(paths, e.p("spec.healthCheckNodePort"))
	}
	return paths
}

// kubeconvProxyableIgnoringVIP is kubeconv.Proxyable for a service whose VIP may still have
// to be allocated.
func kubeconvProxyableIgnoringVIP(svc *corev1.Service) bool {
	if len(svc.Spec.ClusterIPs) > 0 {
		return kubeconv.Proxyable(svc)
	}
	probe := svc.DeepCopy()
	probe.Spec.ClusterIP = "0.0.0.0"
	return kubeconv.Proxyable(probe)
}

// podEndpoints returns the endpoints of svc among pods (see BuildState).
func podEndpoints(svc *corev1.Service, pods []model.Pod, zones map[string]string) []discoveryv1.Endpoint {
	sel := svc.Spec.Selector
	if len(sel) == 0 {
		return nil
	}
	var out []discoveryv1.Endpoint
	for _, p := range pods {
		if p.Namespace != svc.Namespace || !p.Ready || !matches(sel, p.Labels) {
			continue
		}
		for _, ip := range p.IPs {
			ep := discoveryv1.Endpoint{Addresses: []string{ip.Unmap().String()}}
			ep.Conditions.Ready = ptr(true)
			ep.Conditions.Serving = ptr(true)
			ep.Conditions.Terminating = ptr(false)
			if p.NodeName != "" {
				ep.NodeName = ptr(p.NodeName)
				if z := zones[p.NodeName]; z != "" {
					ep.Zone = ptr(z)
				}
			}
			if p.Name != "" {
				ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}
			}
			out = append(out, ep)
		}
	}
	return out
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if l, ok := labels[k]; !ok || l != v {
			return false
		}
	}
	return true
}

// syntheticSlices wraps endpoints (of both families) into EndpointSlices of svc whose ports
// are the numeric target ports of svc, so kubeconv treats them as any other slice.
func syntheticSlices(svc *corev1.Service, name string, eps []discoveryv1.Endpoint) []*discoveryv1.EndpointSlice {
	if len(eps) == 0 {
		return nil
	}
	var ports []discoveryv1.EndpointPort
	for _, sp := range svc.Spec.Ports {
		if sp.TargetPort.Type != intstr.Int {
			continue // named target ports are refused by validation for these endpoints
		}
		target := sp.TargetPort.IntVal
		if target == 0 {
			target = sp.Port
		}
		ports = append(ports, discoveryv1.EndpointPort{Name: ptr(sp.Name), Protocol: ptr(sp.Protocol), Port: ptr(target)})
	}
	// The family of each endpoint (0 when its address does not parse), and the count of each.
	fams := make([]discoveryv1.AddressType, len(eps))
	var count [2]int // IPv4, IPv6
	for i, ep := range eps {
		a, err := netip.ParseAddr(ep.Addresses[0])
		switch {
		case err != nil:
			continue
		case a.Is4():
			fams[i] = discoveryv1.AddressTypeIPv4
		default:
			fams[i] = discoveryv1.AddressTypeIPv6
		}
		if fams[i] == discoveryv1.AddressTypeIPv4 {
			count[0]++
		} else {
			count[1]++
		}
	}
	var out []*discoveryv1.EndpointSlice
	for f, at := range []discoveryv1.AddressType{discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6} {
		if count[f] == 0 {
			continue
		}
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: svc.Namespace,
				Name:      fmt.Sprintf("%s-%s-%s", svc.Name, name, strings.ToLower(string(at))),
				Labels:    map[string]string{discoveryv1.LabelServiceName: svc.Name},
			},
			AddressType: at,
			Ports:       ports,
			Endpoints:   make([]discoveryv1.Endpoint, 0, count[f]),
		}
		for i, ep := range eps {
			if fams[i] == at {
				sl.Endpoints = append(sl.Endpoints, ep)
			}
		}
		out = append(out, sl)
	}
	return out
}

func clonePrefixes(p []netip.Prefix) []netip.Prefix {
	if len(p) == 0 {
		return nil
	}
	return append([]netip.Prefix(nil), p...)
}

func ptr[T any](v T) *T { return &v }
