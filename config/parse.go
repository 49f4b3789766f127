package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"

	"go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Load reads and validates the config file at path. It returns an *Error listing every
// problem when the content is invalid or the file larger than MaxFileSize (read no further
// than that), and another error when the file cannot be read.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		if perr := (*Error)(nil); errors.As(err, &perr) {
			return nil, err
		}
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse validates data, the content of a config file named name (used in problems). The file
// holds YAML documents: at most one ProxyConfig, and any number of Kubernetes Service (v1) and
// EndpointSlice (discovery.k8s.io/v1) objects. It returns an *Error listing every problem (at
// most MaxProblems of them, then how many more). Any input ends in a config or in problems, in
// bounded time and memory: data over MaxFileSize is refused unread, and so are documents whose
// aliases or merge keys form a cycle, nest deeper than MaxDepth or expand to more than
// MaxAliasNodes nodes.
func Parse(name string, data []byte) (*Config, error) {
	if len(data) > MaxFileSize {
		return nil, &Error{Problems: []Problem{tooBig(name, int64(len(data)))}}
	}
	probs := &problemList{}
	p := &parser{file: name, probs: probs, cfg: &Config{File: name}, fields: map[reflect.Type]map[string]field{}, fast: fastCache{}, names: map[validName]bool{}}
	p.run(data)
	if !probs.empty() {
		return nil, probs.error()
	}
	p.keepPositions()
	return p.cfg, nil
}

// keepPositions lets every document of a valid file go of its node tree, keeping only the
// positions BuildState may report problems at.
func (p *parser) keepPositions() {
	paths := map[*doc][]string{}
	for _, e := range p.cfg.services {
		paths[e.d] = append(paths[e.d], e.allocPaths()...)
	}
	if p.proxyDoc != nil {
		p.proxyDoc.keepPositions(paths[p.proxyDoc])
	}
	for _, k := range p.kubeSvcs {
		k.d.keepPositions(paths[k.d])
	}
	for _, k := range p.slices {
		k.d.keepPositions(nil)
	}
}

// parser holds the state of one Parse.
type parser struct {
	file  string
	probs *problemList
	cfg   *Config
	check nodeCheck

	proxyDoc *doc
	raw      *rawConfig
	fields   map[reflect.Type]map[string]field
	fast     fastCache
	names    map[validName]bool
	kubeSvcs []*kubeDoc[corev1.Service]
	slices   []*kubeDoc[discoveryv1.EndpointSlice]
}

type kubeDoc[T any] struct {
	d   *doc
	obj *T
}

func (p *parser) run(data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	docs := 0
	for i := 0; ; i++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			p.probs.add(yamlProblem(p.file, data, err))
			return
		}
		if len(n.Content) == 0 || isNull(n.Content[0]) {
			continue // empty document
		}
		p.check.file = p.file
		if !p.check.check(n.Content[0]) {
			// Nothing may read a tree refused here: stop, as at a syntax error.
			p.probs.add(*p.check.prob)
			return
		}
		docs++
		p.document(i, n.Content[0])
	}
	if docs == 0 {
		// Most likely a file caught half-written: refusing it keeps the last good state.
		p.probs.add(Problem{File: p.file, Line: 1, Column: 1, Message: "the file holds no YAML document"})
		return
	}
	p.settings()
	p.services()
	p.endpointSlices()
	p.crossChecks()
}

// document dispatches one YAML document on its apiVersion and kind.
func (p *parser) document(i int, root *yaml.Node) {
	d := &doc{file: p.file, index: i, start: pos{root.Line, root.Column}, probs: p.probs, fields: p.fields, fast: p.fast, validNames: p.names}
	if root.Kind != yaml.MappingNode {
		d.addf("", "a document must be a mapping with apiVersion and kind, not %s", nodeKind(root))
		return
	}
	var apiVersion, kind string
	for j := 0; j+1 < len(root.Content); j += 2 {
		k, v := root.Content[j], root.Content[j+1]
		switch k.Value {
		case "apiVersion":
			apiVersion = v.Value
			d.pre = append(d.pre, prePos{"apiVersion", pos{k.Line, k.Column}})
		case "kind":
			kind = v.Value
			d.pre = append(d.pre, prePos{"kind", pos{k.Line, k.Column}})
		}
	}
	d.kind = kind
	switch {
	case kind == Kind:
		if apiVersion != APIVersion {
			d.addf("apiVersion", "must be %s for kind %s, not %q", APIVersion, Kind, apiVersion)
		}
		if p.proxyDoc != nil {
			d.addf("kind", "a file holds at most one ProxyConfig (the first is at line %d)", p.proxyDoc.start.line)
			return
		}
		raw := &rawConfig{}
		decodeNode(d, root, raw)
		p.proxyDoc, p.raw = d, raw
	case kind == "Service":
		if apiVersion != "v1" {
			d.addf("apiVersion", "must be v1 for kind Service, not %q", apiVersion)
		}
		svc := &corev1.Service{}
		if decodeNode(d, root, svc) {
			p.kubeSvcs = append(p.kubeSvcs, &kubeDoc[corev1.Service]{d, svc})
		}
	case kind == "EndpointSlice":
		if apiVersion != "discovery.k8s.io/v1" {
			d.addf("apiVersion", "must be discovery.k8s.io/v1 for kind EndpointSlice, not %q", apiVersion)
		}
		sl := &discoveryv1.EndpointSlice{}
		if decodeNode(d, root, sl) {
			p.slices = append(p.slices, &kubeDoc[discoveryv1.EndpointSlice]{d, sl})
		}
	case kind == "":
		d.addf("kind", "missing: must be %s, Service or EndpointSlice", Kind)
	default:
		d.addf("kind", "unsupported kind %q: must be %s, Service or EndpointSlice", kind, Kind)
	}
}

// services validates the services of the ProxyConfig and the Service documents.
func (p *parser) services() {
	if p.raw != nil {
		for i, rs := range p.raw.Services {
			if rs == nil {
				p.proxyDoc.addf(index("services", i), "empty service entry")
				continue
			}
			if e := p.proxyService(index("services", i), rs); e != nil {
				p.cfg.services = append(p.cfg.services, e)
			}
		}
	}
	for _, k := range p.kubeSvcs {
		if e := p.kubeService(k.d, k.obj); e != nil {
			p.cfg.services = append(p.cfg.services, e)
		}
	}
}

// endpointSlices validates the EndpointSlice documents.
func (p *parser) endpointSlices() {
	names := map[string]*doc{}
	known := map[model.ServiceKey]bool{}
	for _, e := range p.cfg.services {
		known[e.key] = true
	}
	for _, k := range p.slices {
		d, sl := k.d, k.obj
		if sl.Namespace == "" {
			sl.Namespace = DefaultNamespace
		}
		checkName(d, "metadata.name", sl.Name, true, dns1123Subdomain)
		checkName(d, "metadata.namespace", sl.Namespace, false, dns1123Label)
		id := sl.Namespace + "/" + sl.Name
		if first, dup := names[id]; dup && sl.Name != "" {
			d.addf("metadata.name", "duplicate EndpointSlice %s (first at line %d)", id, first.start.line)
		}
		names[id] = d
		svcName := sl.Labels[discoveryv1.LabelServiceName]
		switch {
		case svcName == "":
			d.addf("metadata.labels", "label %s is required: it names the service the slice belongs to", discoveryv1.LabelServiceName)
		case !known[model.ServiceKey{Namespace: sl.Namespace, Name: svcName}]:
			d.addf(join("metadata.labels", discoveryv1.LabelServiceName), "no service %s/%s in this file", sl.Namespace, svcName)
		}
		switch sl.AddressType {
		case discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6, discoveryv1.AddressTypeFQDN:
		case "":
			d.addf("addressType", "required: IPv4, IPv6 or FQDN")
		default:
			d.addf("addressType", "must be IPv4, IPv6 or FQDN, not %q", sl.AddressType)
		}
		for j, ep := range sl.Endpoints {
			ep := ep
			path := index("endpoints", j)
			if len(ep.Addresses) == 0 {
				d.addf(path, "addresses: at least one address is required")
			}
			for a, s := range ep.Addresses {
				ap := index(join(path, "addresses"), a)
				if sl.AddressType == discoveryv1.AddressTypeFQDN {
					continue
				}
				ip, ok := parseIP(d, ap, s)
				if ok && (sl.AddressType == discoveryv1.AddressTypeIPv4) != ip.Is4() && sl.AddressType != "" {
					d.addf(ap, "%s is not an %s address", s, sl.AddressType)
				} else if ok {
					checkEndpointIP(d, ap, ip)
				}
			}
			if ep.NodeName != nil {
				checkName(d, join(path, "nodeName"), *ep.NodeName, false, dns1123Subdomain)
			}
		}
		seen := map[string]int{}
		for j, port := range sl.Ports {
			path := index("ports", j)
			name := ""
			if port.Name != nil {
				name = *port.Name
				if name != "" {
					checkName(d, join(path, "name"), name, false, dns1123Label)
				}
			}
			proto := corev1.ProtocolTCP
			if port.Protocol != nil {
				proto = *port.Protocol
				checkProtocol(d, join(path, "protocol"), string(proto))
			}
			if port.Port != nil && (*port.Port < 1 || *port.Port > 65535) {
				d.addf(join(path, "port"), "%d is not a port (1-65535)", *port.Port)
			}
			id := name + "/" + string(proto)
			if first, dup := seen[id]; dup {
				d.addf(join(path, "name"), "duplicate port name %q with protocol %s (first at line %d)", name, proto, d.line(index("ports", first)))
			}
			seen[id] = j
		}
		p.cfg.slices = append(p.cfg.slices, &sliceEntry{d: d, slice: sl})
	}
}

// crossChecks finds what is duplicated between services: names, VIPs, node ports.
func (p *parser) crossChecks() {
	type where struct {
		d    *doc
		path string
	}
	keys := map[model.ServiceKey]where{}
	vips := map[netip.Addr]where{}
	nodePorts := map[int32]where{}
	for _, e := range p.cfg.services {
		if first, dup := keys[e.key]; dup {
			e.d.addf(e.p("metadata.name"), "duplicate service %s (first at line %d)", e.key, first.d.line(first.path))
		} else {
			keys[e.key] = where{e.d, e.p("metadata.name")}
		}
		for i, ip := range e.svc.Spec.ClusterIPs {
			if ip == "" || ip == corev1.ClusterIPNone || i >= len(e.vipPaths) {
				continue
			}
			a, err := netip.ParseAddr(ip)
			if err != nil {
				continue
			}
			path := e.vipPaths[i]
			if first, dup := vips[a]; dup {
				e.d.addf(path, "VIP %s is also the clusterIP of the service at line %d", ip, first.d.line(first.path))
			} else {
				vips[a] = where{e.d, path}
			}
		}
		if e.svc.Spec.Type == corev1.ServiceTypeNodePort || e.svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			// The ports of one service may share a node port number when their protocols
			// differ (DNS on TCP and UDP), as in Kubernetes.
			own := map[int32]bool{}
			ownProto := map[string]bool{}
			for j, sp := range e.svc.Spec.Ports {
				if sp.NodePort == 0 {
					continue
				}
				path := e.p(index("spec.ports", j) + ".nodePort")
				pp := fmt.Sprintf("%d/%s", sp.NodePort, sp.Protocol)
				first, dup := nodePorts[sp.NodePort]
				switch {
				case dup && (!own[sp.NodePort] || ownProto[pp]):
					e.d.addf(path, "node port %d is also used at line %d", sp.NodePort, first.d.line(first.path))
				case !dup:
					nodePorts[sp.NodePort] = where{e.d, path}
				}
				own[sp.NodePort] = true
				ownProto[pp] = true
			}
			if hc := e.svc.Spec.HealthCheckNodePort; hc != 0 {
				path := e.p("spec.healthCheckNodePort")
				if first, dup := nodePorts[hc]; dup {
					e.d.addf(path, "node port %d is also used at line %d", hc, first.d.line(first.path))
				} else {
					nodePorts[hc] = where{e.d, path}
				}
			}
		}
	}
}
