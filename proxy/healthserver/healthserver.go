// Package healthserver answers load balancers' health checks on each service's
// healthCheckNodePort (LoadBalancer services with externalTrafficPolicy Local), the way
// kube-proxy does: 200 while this node has a ready local endpoint for the service and the proxy
// itself is healthy, 503 otherwise, so the load balancer only sends traffic to nodes that can
// serve it locally. The body is kube-proxy's ({"service": {"namespace", "name"},
// "localEndpoints": N, "serviceProxyHealthy": bool}) and the header
// X-Load-Balancing-Endpoint-Weight carries N.
package healthserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Want lists, per health-check node port, the service it answers for and its number of ready
// local endpoints, from st. As kube-proxy: only ready endpoints on this node count (a node whose
// local endpoints are all terminating, even if still serving, answers 503 so that the load
// balancer drains it), each address once across the service's ports.
func Want(st *model.State) map[uint16]Entry {
	out := map[uint16]Entry{}
	for _, s := range st.Services {
		if s.HealthCheckNodePort == 0 || !s.ExternalTrafficPolicyLocal || !s.ExternallyReachable() {
			continue
		}
		ready := map[netip.Addr]struct{}{}
		for i := range s.Ports {
			for _, e := range s.Ports[i].Endpoints {
				if e.Ready && e.NodeName == st.NodeName {
					ready[e.IP] = struct{}{}
				}
			}
		}
		out[s.HealthCheckNodePort] = Entry{Service: s.Key, LocalEndpoints: len(ready)}
	}
	return out
}

// Entry is what one port answers for.
type Entry struct {
	Service        model.ServiceKey
	LocalEndpoints int
}

// answer is the body of a health check answer, kube-proxy's.
type answer struct {
	Service             serviceName `json:"service"`
	LocalEndpoints      int         `json:"localEndpoints"`
	ServiceProxyHealthy bool        `json:"serviceProxyHealthy"`
}

type serviceName struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// Server runs one listener per health-check node port.
type Server struct {
	log *slog.Logger
	// Listen opens a listener for a port (default: TCP on every address).
	listen       func(port uint16) (net.Listener, error)
	proxyHealthy func() bool

	mu        sync.Mutex
	entries   map[uint16]Entry
	listeners map[uint16]*http.Server
}

// New returns a server with nothing to serve yet. proxyHealthy reports whether the proxy
// itself is healthy (the sync loop's Live; nil: always); while it is not, every port answers
// 503 with serviceProxyHealthy false.
func New(log *slog.Logger, proxyHealthy func() bool) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if proxyHealthy == nil {
		proxyHealthy = func() bool { return true }
	}
	return &Server{log: log, proxyHealthy: proxyHealthy, entries: map[uint16]Entry{}, listeners: map[uint16]*http.Server{},
		listen: func(port uint16) (net.Listener, error) {
			return net.Listen("tcp", ":"+strconv.Itoa(int(port)))
		}}
}

// Sync serves exactly the ports of want: new ones start listening, gone ones stop. It returns
// the errors of ports it could not listen on (the others still serve).
func (s *Server) Sync(want map[uint16]Entry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries = want
	var errs []error
	for port, srv := range s.listeners {
		if _, ok := want[port]; !ok {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = srv.Shutdown(ctx)
			cancel()
			delete(s.listeners, port)
		}
	}
	for port := range want {
		if _, ok := s.listeners[port]; ok {
			continue
		}
		l, err := s.listen(port)
		if err != nil {
			errs = append(errs, fmt.Errorf("health check node port %d: %w", port, err))
			continue
		}
		srv := &http.Server{Handler: s.handler(port), ReadHeaderTimeout: 5 * time.Second}
		s.listeners[port] = srv
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("health check server stopped", "port", port, "err", err)
			}
		}()
	}
	return errors.Join(errs...)
}

// Close stops every listener.
func (s *Server) Close() error { return s.Sync(nil) }

func (s *Server) handler(port uint16) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		e, ok := s.entries[port]
		s.mu.Unlock()
		healthy := s.proxyHealthy()
		code := http.StatusOK
		if !ok || e.LocalEndpoints == 0 || !healthy {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Load-Balancing-Endpoint-Weight", strconv.Itoa(e.LocalEndpoints))
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(answer{Service: serviceName{e.Service.Namespace, e.Service.Name},
			LocalEndpoints: e.LocalEndpoints, ServiceProxyHealthy: healthy})
	})
}
