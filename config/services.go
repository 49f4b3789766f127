package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svcproxy/svcproxy/proxy/model"
)

type nameKind int

const (
	dns1123Label nameKind = iota
	dns1123Subdomain
	dns1035Label
)

// checkName validates a Kubernetes object name.
func checkName(d *doc, path, v string, required bool, kind nameKind) {
	if v == "" {
		if required {
			d.addf(path, "required")
		}
		return
	}
	key := validName{kind, v}
	if d.validNames[key] {
		return
	}
	var errs []string
	switch kind {
	case dns1123Label:
		errs = validation.IsDNS1123Label(v)
	case dns1123Subdomain:
		errs = validation.IsDNS1123Subdomain(v)
	case dns1035Label:
		errs = validation.IsDNS1035Label(v)
	}
	if len(errs) > 0 {
		d.addf(path, "%q is not a valid name: %s", v, strings.Join(errs, "; "))
	} else if d.validNames != nil {
		d.validNames[key] = true
	}
}

// validName is a name found valid for a kind, remembered per file: a file names the same
// nodes and namespaces many times.
type validName struct {
	kind nameKind
	name string
}

func checkProtocol(d *doc, path, p string) {
	switch model.Protocol(p) {
	case model.TCP, model.UDP, model.SCTP:
	default:
		d.addf(path, "must be TCP, UDP or SCTP, not %q", p)
	}
}

// proxyService turns a ProxyConfig service entry into its Kubernetes form and validates it.
func (p *parser) proxyService(path string, rs *rawService) *entry {
	d := p.proxyDoc
	e := &entry{d: d, path: path, proxyConfig: true}
	svc := &corev1.Service{}
	svc.Name, svc.Namespace = rs.Name, rs.Namespace
	spec := &svc.Spec
	spec.Type = corev1.ServiceType(rs.Type)
	switch {
	case len(rs.ClusterIPs) > 0:
		spec.ClusterIPs = rs.ClusterIPs
		if rs.ClusterIP != "" && rs.ClusterIP != rs.ClusterIPs[0] {
			d.addf(join(path, "clusterIP"), "%s differs from clusterIPs[0]: set one of them", rs.ClusterIP)
		}
		for i := range rs.ClusterIPs {
			e.vipPaths = append(e.vipPaths, index(join(path, "clusterIPs"), i))
		}
	case rs.ClusterIP != "":
		spec.ClusterIPs = []string{rs.ClusterIP}
		e.vipPaths = []string{join(path, "clusterIP")}
	}
	if len(spec.ClusterIPs) > 0 {
		spec.ClusterIP = spec.ClusterIPs[0]
	}
	if rs.IPFamilyPolicy != "" {
		pol := corev1.IPFamilyPolicy(rs.IPFamilyPolicy)
		spec.IPFamilyPolicy = &pol
	}
	spec.ExternalIPs = rs.ExternalIPs
	spec.LoadBalancerSourceRanges = rs.LoadBalancerSourceRanges
	for _, ip := range rs.LoadBalancerIPs {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	spec.SessionAffinity = corev1.ServiceAffinity(rs.SessionAffinity)
	if rs.SessionAffinityTimeoutSeconds != nil {
		t := *rs.SessionAffinityTimeoutSeconds
		spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &t}}
	}
	spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicy(rs.ExternalTrafficPolicy)
	if rs.InternalTrafficPolicy != "" {
		itp := corev1.ServiceInternalTrafficPolicy(rs.InternalTrafficPolicy)
		spec.InternalTrafficPolicy = &itp
	}
	spec.HealthCheckNodePort = rs.HealthCheckNodePort
	if rs.TrafficDistribution != "" {
		td := rs.TrafficDistribution
		spec.TrafficDistribution = &td
	}
	for _, rp := range rs.Ports {
		sp := corev1.ServicePort{Name: rp.Name, Protocol: corev1.Protocol(rp.Protocol), Port: rp.Port, NodePort: rp.NodePort}
		if rp.TargetPort != nil {
			sp.TargetPort = *rp.TargetPort
		}
		spec.Ports = append(spec.Ports, sp)
	}
	spec.Selector = rs.Selector
	e.svc = svc
	if !p.validateService(e, len(rs.Endpoints) > 0) {
		return nil
	}
	p.staticEndpoints(e, rs.Endpoints)
	if rs.HealthCheck != nil {
		if hc, ok := healthCheck(d, join(path, "healthCheck"), rs.HealthCheck, e); ok {
			p.cfg.healthChecks[e.key] = hc
		}
	}
	return e
}

// kubeService validates a Service document.
func (p *parser) kubeService(d *doc, svc *corev1.Service) *entry {
	e := &entry{d: d, svc: svc}
	if len(svc.Spec.ClusterIPs) > 0 {
		if svc.Spec.ClusterIP != "" && svc.Spec.ClusterIP != svc.Spec.ClusterIPs[0] {
			d.addf("spec.clusterIP", "%s differs from spec.clusterIPs[0]: set one of them", svc.Spec.ClusterIP)
		}
		for i := range svc.Spec.ClusterIPs {
			e.vipPaths = append(e.vipPaths, index("spec.clusterIPs", i))
		}
	} else if svc.Spec.ClusterIP != "" {
		svc.Spec.ClusterIPs = []string{svc.Spec.ClusterIP}
		e.vipPaths = []string{"spec.clusterIP"}
	}
	if len(svc.Spec.ClusterIPs) > 0 {
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	if !p.validateService(e, false) {
		return nil
	}
	return e
}

// validateService checks the Kubernetes form of a service (from either kind of document),
// applies defaults, and fills e.key and the VIP allocation plan. It returns false when the
// service is too broken to go on with (no name).
func (p *parser) validateService(e *entry, hasStatic bool) bool {
	d, svc, spec, c := e.d, e.svc, &e.svc.Spec, p.cfg
	if svc.Namespace == "" {
		svc.Namespace = DefaultNamespace
	}
	checkName(d, e.p("metadata.name"), svc.Name, true, dns1035Label)
	checkName(d, e.p("metadata.namespace"), svc.Namespace, false, dns1123Label)
	if svc.Name == "" {
		return false
	}
	e.key = model.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}

	if spec.Type == "" {
		spec.Type = corev1.ServiceTypeClusterIP
	}
	switch spec.Type {
	case corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer:
	case corev1.ServiceTypeExternalName:
		if e.proxyConfig {
			d.addf(e.p("spec.type"), "ExternalName services are not proxied; use ClusterIP, NodePort or LoadBalancer")
		}
		return true // not proxied: nothing else matters
	default:
		d.addf(e.p("spec.type"), "must be ClusterIP, NodePort or LoadBalancer, not %q", spec.Type)
	}
	external := spec.Type == corev1.ServiceTypeNodePort || spec.Type == corev1.ServiceTypeLoadBalancer || len(spec.ExternalIPs) > 0
	lb := spec.Type == corev1.ServiceTypeLoadBalancer

	// VIPs.
	headless := len(spec.ClusterIPs) > 0 && spec.ClusterIPs[0] == corev1.ClusterIPNone
	if headless && e.proxyConfig {
		d.addf(e.vipPaths[0], "headless services (clusterIP None) have no VIP to proxy; leave clusterIP out to allocate one")
	}
	var vips []netip.Addr
	for i, s := range spec.ClusterIPs {
		if headless {
			break
		}
		a, ok := parseIP(d, e.vipPaths[i], s)
		if !ok {
			continue
		}
		if len(c.ServiceCIDRs) > 0 && !containsAddr(c.ServiceCIDRs, a) {
			d.addf(e.vipPaths[i], "VIP %s is outside serviceCIDR %s", a, prefixes(c.ServiceCIDRs))
		}
		vips = append(vips, a)
	}
	if len(spec.ClusterIPs) > 2 || len(vips) == 2 && vips[0].Is4() == vips[1].Is4() {
		d.addf(e.p("spec.clusterIPs"), "at most two VIPs, one IPv4 and one IPv6")
	}
	policy := corev1.IPFamilyPolicySingleStack
	if spec.IPFamilyPolicy != nil {
		policy = *spec.IPFamilyPolicy
	}
	switch policy {
	case corev1.IPFamilyPolicySingleStack:
		if spec.IPFamilyPolicy != nil && len(vips) > 1 {
			d.addf(e.p("spec.ipFamilyPolicy"), "SingleStack, but two VIPs are given")
		}
	case corev1.IPFamilyPolicyPreferDualStack:
	case corev1.IPFamilyPolicyRequireDualStack:
		if len(c.ServiceCIDRs) < 2 {
			d.addf(e.p("spec.ipFamilyPolicy"), "RequireDualStack needs an IPv4 and an IPv6 serviceCIDR")
		}
	default:
		d.addf(e.p("spec.ipFamilyPolicy"), "must be SingleStack, PreferDualStack or RequireDualStack, not %q", policy)
	}
	for _, a := range vips {
		e.setFamily(a)
	}
	if !headless && len(spec.ClusterIPs) == 0 {
		e.allocFrom = allocRanges(c.ServiceCIDRs, spec.IPFamilies, policy)
		if len(e.allocFrom) == 0 {
			d.addf(e.p("spec.clusterIP"), "no clusterIP given and no serviceCIDR to allocate one from")
		}
		for _, pf := range e.allocFrom {
			e.setFamily(pf.Addr())
		}
	}

	for i, s := range spec.ExternalIPs {
		parseIP(d, e.p(index("spec.externalIPs", i)), s)
	}
	if spec.LoadBalancerIP != "" {
		parseIP(d, e.p("spec.loadBalancerIP"), spec.LoadBalancerIP)
		if !lb {
			d.addf(e.p("spec.loadBalancerIP"), "only for type LoadBalancer")
		}
	}
	for i, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			parseIP(d, e.p(index("status.loadBalancer.ingress", i)+".ip"), ing.IP)
		}
	}
	if e.proxyConfig && len(svc.Status.LoadBalancer.Ingress) > 0 && !lb {
		d.addf(e.p("status.loadBalancer.ingress"), "only for type LoadBalancer")
	}
	for i, s := range spec.LoadBalancerSourceRanges {
		parseCIDR(d, e.p(index("spec.loadBalancerSourceRanges", i)), s)
	}
	if len(spec.LoadBalancerSourceRanges) > 0 && !lb {
		d.addf(e.p("spec.loadBalancerSourceRanges"), "only for type LoadBalancer")
	}

	switch spec.SessionAffinity {
	case "", corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP:
	default:
		d.addf(e.p("spec.sessionAffinity"), "must be None or ClientIP, not %q", spec.SessionAffinity)
	}
	if sc := spec.SessionAffinityConfig; sc != nil && sc.ClientIP != nil && sc.ClientIP.TimeoutSeconds != nil {
		path := e.p("spec.sessionAffinityConfig.clientIP.timeoutSeconds")
		if t := *sc.ClientIP.TimeoutSeconds; t < 1 || t > 86400 {
			d.addf(path, "%d is not within 1-86400 seconds", t)
		}
		if spec.SessionAffinity != corev1.ServiceAffinityClientIP {
			d.addf(path, "only with sessionAffinity ClientIP")
		}
	}
	switch spec.ExternalTrafficPolicy {
	case "", corev1.ServiceExternalTrafficPolicyCluster:
	case corev1.ServiceExternalTrafficPolicyLocal:
		if !external {
			d.addf(e.p("spec.externalTrafficPolicy"), "Local only applies to NodePort and LoadBalancer services or services with externalIPs")
		}
	default:
		d.addf(e.p("spec.externalTrafficPolicy"), "must be Cluster or Local, not %q", spec.ExternalTrafficPolicy)
	}
	if itp := spec.InternalTrafficPolicy; itp != nil {
		switch *itp {
		case "", corev1.ServiceInternalTrafficPolicyCluster, corev1.ServiceInternalTrafficPolicyLocal:
		default:
			d.addf(e.p("spec.internalTrafficPolicy"), "must be Cluster or Local, not %q", *itp)
		}
	}
	if hc := spec.HealthCheckNodePort; hc != 0 {
		path := e.p("spec.healthCheckNodePort")
		switch {
		case !lb || spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal:
			d.addf(path, "only for type LoadBalancer with externalTrafficPolicy Local")
		case hc < 0 || hc > 65535 || !c.NodePortRange.Contains(uint16(hc)):
			d.addf(path, "%d is outside nodePortRange %s", hc, c.NodePortRange)
		}
	}
	if td := spec.TrafficDistribution; td != nil {
		switch *td {
		case "", corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone, corev1.ServiceTrafficDistributionPreferSameNode:
		default:
			d.addf(e.p("spec.trafficDistribution"), "must be PreferClose, PreferSameZone or PreferSameNode, not %q", *td)
		}
	}

	// Ports.
	if len(spec.Ports) == 0 && !headless {
		d.addf(e.p("spec.ports"), "at least one port is required")
	}
	names := map[string]int{}
	pairs := map[string]int{}
	for j := range spec.Ports {
		sp := &spec.Ports[j]
		pp := e.p(index("spec.ports", j))
		if sp.Protocol == "" {
			sp.Protocol = corev1.ProtocolTCP
		}
		if sp.Name == "" && len(spec.Ports) > 1 {
			d.addf(join(pp, "name"), "required when a service has more than one port")
		} else if sp.Name != "" {
			checkName(d, join(pp, "name"), sp.Name, false, dns1123Label)
			if first, dup := names[sp.Name]; dup {
				d.addf(join(pp, "name"), "duplicate port name %q (first at line %d)", sp.Name, d.line(e.p(index("spec.ports", first))))
			}
			names[sp.Name] = j
		}
		checkProtocol(d, join(pp, "protocol"), string(sp.Protocol))
		if sp.Port < 1 || sp.Port > 65535 {
			d.addf(join(pp, "port"), "%d is not a port (1-65535)", sp.Port)
		} else {
			pair := fmt.Sprintf("%d/%s", sp.Port, sp.Protocol)
			if first, dup := pairs[pair]; dup {
				d.addf(join(pp, "port"), "duplicate port %s (first at line %d)", pair, d.line(e.p(index("spec.ports", first))))
			}
			pairs[pair] = j
		}
		switch tp := sp.TargetPort; {
		case tp.Type == intstr.Int && tp.IntVal == 0:
			sp.TargetPort = intstr.FromInt32(sp.Port)
		case tp.Type == intstr.Int && (tp.IntVal < 1 || tp.IntVal > 65535):
			d.addf(join(pp, "targetPort"), "%d is not a port (1-65535)", tp.IntVal)
		case tp.Type == intstr.String:
			if errs := validation.IsValidPortName(tp.StrVal); len(errs) > 0 {
				d.addf(join(pp, "targetPort"), "%q is neither a port number nor a port name: %s", tp.StrVal, strings.Join(errs, "; "))
			} else if len(spec.Selector) > 0 || hasStatic {
				d.addf(join(pp, "targetPort"), "named targetPort %q cannot be resolved for selector or static endpoints (pods registered through CNI carry no port names): use a number", tp.StrVal)
			}
		}
		if sp.NodePort != 0 {
			path := join(pp, "nodePort")
			switch {
			case spec.Type != corev1.ServiceTypeNodePort && spec.Type != corev1.ServiceTypeLoadBalancer:
				d.addf(path, "only for type NodePort or LoadBalancer")
			case sp.NodePort < 0 || sp.NodePort > 65535 || !c.NodePortRange.Contains(uint16(sp.NodePort)):
				d.addf(path, "%d is outside nodePortRange %s", sp.NodePort, c.NodePortRange)
			}
		}
	}
	for k, v := range spec.Selector {
		path := join(e.p("spec.selector"), k)
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			d.addf(path, "label key %q is invalid: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			d.addf(path, "label value %q is invalid: %s", v, strings.Join(errs, "; "))
		}
	}
	return true
}

func (e *entry) setFamily(a netip.Addr) {
	if a.Is4() {
		e.v4 = true
	} else {
		e.v6 = true
	}
}

func (e *entry) hasFamily(a netip.Addr) bool {
	if a.Is4() {
		return e.v4
	}
	return e.v6
}

// allocRanges returns the service CIDRs a service without VIP allocates from: its ipFamilies
// when given, else the first range (SingleStack) or one per family (dual-stack policies).
func allocRanges(cidrs []netip.Prefix, families []corev1.IPFamily, policy corev1.IPFamilyPolicy) []netip.Prefix {
	var out []netip.Prefix
	if len(families) > 0 {
		for _, f := range families {
			for _, c := range cidrs {
				if c.Addr().Is4() == (f == corev1.IPv4Protocol) {
					out = append(out, c)
					break
				}
			}
		}
		return out
	}
	if len(cidrs) == 0 {
		return nil
	}
	if policy == corev1.IPFamilyPolicySingleStack {
		return cidrs[:1]
	}
	return cidrs
}

// staticEndpoints validates the `endpoints` of a ProxyConfig service and keeps them in the
// EndpointSlice form.
func (p *parser) staticEndpoints(e *entry, eps []rawEndpoint) {
	d := e.d
	seen := make(map[netip.Addr]int, len(eps))
	epsPath := join(e.path, "endpoints")
	e.static = slices.Grow(e.static, len(eps))
	for i, re := range eps {
		path := index(epsPath, i)
		ipPath := path + ".ip"
		if re.IP == "" {
			d.addf(ipPath, "required")
			continue
		}
		a, ok := parseIP(d, ipPath, re.IP)
		if !ok {
			continue
		}
		checkEndpointIP(d, ipPath, a)
		if (e.v4 || e.v6) && !e.hasFamily(a) {
			d.addf(ipPath, "%s is of an IP family the service has no VIP of", a)
		}
		if first, dup := seen[a]; dup {
			d.addf(ipPath, "duplicate endpoint %s (first at line %d)", a, d.line(index(epsPath, first)))
		}
		seen[a] = i
		if re.NodeName != "" && !d.validNames[validName{dns1123Subdomain, re.NodeName}] {
			checkName(d, join(path, "nodeName"), re.NodeName, false, dns1123Subdomain)
		}
		ready := re.Ready == nil || *re.Ready
		serving := ready
		if re.Serving != nil {
			serving = *re.Serving
		}
		term := re.Terminating != nil && *re.Terminating
		if ready && term {
			d.addf(join(path, "terminating"), "a terminating endpoint cannot be ready (set ready: false, serving: true to let it drain)")
		}
		ep := discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &term},
		}
		if re.NodeName != "" {
			n := re.NodeName
			ep.NodeName = &n
		}
		if re.Zone != "" {
			z := re.Zone
			ep.Zone = &z
		}
		if len(re.ZoneHints) > 0 || len(re.NodeHints) > 0 {
			ep.Hints = &discoveryv1.EndpointHints{}
			for _, z := range re.ZoneHints {
				ep.Hints.ForZones = append(ep.Hints.ForZones, discoveryv1.ForZone{Name: z})
			}
			for _, n := range re.NodeHints {
				ep.Hints.ForNodes = append(ep.Hints.ForNodes, discoveryv1.ForNode{Name: n})
			}
		}
		e.static = append(e.static, ep)
	}
}

// Health check defaults.
const (
	defaultHCInterval  = 2
	defaultHCTimeout   = 1
	defaultHCHealthy   = 2
	defaultHCUnhealthy = 3
)

func healthCheck(d *doc, path string, r *rawHealthCheck, e *entry) (HealthCheck, bool) {
	ok := true
	bad := func(field, format string, args ...any) {
		d.addf(join(path, field), format, args...)
		ok = false
	}
	hc := HealthCheck{Type: strings.ToLower(r.Type), Path: r.Path}
	switch hc.Type {
	case "tcp":
		if r.Path != "" {
			bad("path", "only for type http")
		}
	case "http":
		if hc.Path == "" {
			hc.Path = "/"
		} else if !strings.HasPrefix(hc.Path, "/") {
			bad("path", "%q must start with /", r.Path)
		}
	case "":
		bad("type", "required: tcp or http")
	default:
		bad("type", "must be tcp or http, not %q", r.Type)
	}
	if r.Port < 0 || r.Port > 65535 {
		bad("port", "%d is not a port (1-65535; 0 = each endpoint's target port)", r.Port)
	} else {
		hc.Port = uint16(r.Port)
	}
	if hc.Port == 0 {
		for j, sp := range e.svc.Spec.Ports {
			if sp.TargetPort.Type == intstr.String {
				bad("port", "required: ports[%d] has a named targetPort", j)
				break
			}
		}
	}
	num := func(field string, v *int64, def, lo, hi int64) int64 {
		if v == nil {
			return def
		}
		if *v < lo || *v > hi {
			bad(field, "%d is not within %d-%d", *v, lo, hi)
			return def
		}
		return *v
	}
	interval := num("intervalSeconds", r.IntervalSeconds, defaultHCInterval, 1, 3600)
	timeout := num("timeoutSeconds", r.TimeoutSeconds, defaultHCTimeout, 1, 3600)
	if timeout > interval {
		bad("timeoutSeconds", "%d is longer than intervalSeconds %d", timeout, interval)
	}
	hc.Interval = time.Duration(interval) * time.Second
	hc.Timeout = time.Duration(timeout) * time.Second
	hc.HealthyThreshold = int(num("healthyThreshold", r.HealthyThreshold, defaultHCHealthy, 1, 100))
	hc.UnhealthyThreshold = int(num("unhealthyThreshold", r.UnhealthyThreshold, defaultHCUnhealthy, 1, 100))
	return hc, ok
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func prefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
