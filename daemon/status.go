package daemon

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// servicesStatus renders the programmed state for `svcproxy status`, with each endpoint's
// state as the backends see it (from model.CategorizeEndpoints, the same split they program).
func servicesStatus(st *model.State) []api.Service {
	if st == nil {
		return []api.Service{}
	}
	out := make([]api.Service, 0, len(st.Services))
	for _, s := range st.Services {
		as := api.Service{
			Namespace:       s.Key.Namespace,
			Name:            s.Key.Name,
			Type:            string(s.Type),
			ClusterIPs:      addrs(s.ClusterIPs),
			ExternalIPs:     addrs(s.ExternalIPs),
			LoadBalancerIPs: addrs(s.LoadBalancerIPs),
			Ports:           []api.Port{},
		}
		if s.AffinityTimeout > 0 {
			as.SessionAffinity = "ClientIP"
		}
		for i := range s.Ports {
			p := &s.Ports[i]
			c := model.CategorizeEndpoints(s, p, st.NodeName, st.Zone)
			ap := api.Port{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port, NodePort: p.NodePort, Endpoints: []api.Endpoint{}}
			for _, e := range p.Endpoints {
				ap.Endpoints = append(ap.Endpoints, api.Endpoint{
					Address: e.String(), Node: e.NodeName, Zone: e.Zone,
					State: endpointState(e, c), Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating,
				})
			}
			as.Ports = append(as.Ports, ap)
		}
		out = append(out, as)
	}
	return out
}

func endpointState(e model.Endpoint, c model.Categorized) string {
	in := func(list []model.Endpoint) bool {
		for _, x := range list {
			if x.IP == e.IP && x.Port == e.Port {
				return true
			}
		}
		return false
	}
	switch {
	case in(c.Cluster) && e.Ready:
		return "active"
	case in(c.Cluster):
		return "draining"
	case in(c.Local) && e.Ready:
		return "local-only"
	case in(c.Local):
		return "draining"
	}
	return "unused"
}

func addrs(a []netip.Addr) []string {
	out := make([]string, 0, len(a))
	for _, x := range a {
		out = append(out, x.String())
	}
	return out
}
