package model

// Categorized is the split of a service port's endpoints that every backend programs. It follows
// kube-proxy's rules, kept here once so no backend re-implements them:
//   - Cluster is used by traffic under a Cluster policy: the ready endpoints (narrowed by
//     topology hints when the service asks for them and every ready endpoint has a usable
//     hint); when none is ready, the serving+terminating ones, so connections drain gracefully.
//   - Local is used by traffic under a Local policy (internal or external): the ready endpoints
//     on this node, or when none is ready the serving+terminating ones on this node. It is nil
//     when neither policy is Local.
type Categorized struct {
	Cluster []Endpoint
	Local   []Endpoint
	// UsesLocal reports whether any traffic policy of the service is Local.
	UsesLocal bool
	// AnyEndpoints reports whether the port has any endpoint at all, ready or not.
	AnyEndpoints bool
}

// CategorizeEndpoints splits the endpoints of port p of service s for a proxy on node
// nodeName in zone zone.
func CategorizeEndpoints(s *Service, p *ServicePort, nodeName, zone string) Categorized {
	c := Categorized{AnyEndpoints: len(p.Endpoints) > 0}
	c.Cluster = usable(p.Endpoints, func(Endpoint) bool { return true })
	c.Cluster = topologyFilter(s, c.Cluster, nodeName, zone)
	c.UsesLocal = s.InternalTrafficPolicyLocal || (s.ExternalTrafficPolicyLocal && s.ExternallyReachable())
	if c.UsesLocal {
		c.Local = usable(p.Endpoints, func(e Endpoint) bool { return e.NodeName == nodeName })
	}
	return c
}

// usable returns the ready endpoints among those keep accepts, or when none is ready the
// serving and terminating ones.
func usable(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var ready, draining []Endpoint
	for _, e := range eps {
		if !keep(e) {
			continue
		}
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			draining = append(draining, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return draining
}

// topologyFilter narrows eps by hints when the service asks for topology aware routing and the
// hints are usable; otherwise it returns eps unchanged (as kube-proxy does, any endpoint without
// a hint disables hints for the whole service port).
func topologyFilter(s *Service, eps []Endpoint, nodeName, zone string) []Endpoint {
	if s.TrafficDistribution == "" || len(eps) == 0 {
		return eps
	}
	pick := func(hints func(Endpoint) []string, want string) []Endpoint {
		if want == "" {
			return nil
		}
		var out []Endpoint
		for _, e := range eps {
			h := hints(e)
			if len(h) == 0 {
				return nil
			}
			for _, z := range h {
				if z == want {
					out = append(out, e)
					break
				}
			}
		}
		return out
	}
	if s.TrafficDistribution == "PreferSameNode" {
		if out := pick(func(e Endpoint) []string { return e.NodeHints }, nodeName); len(out) > 0 {
			return out
		}
	}
	if out := pick(func(e Endpoint) []string { return e.ZoneHints }, zone); len(out) > 0 {
		return out
	}
	return eps
}
