// Package healthserver answers load balancers' health checks on each service's
// healthCheckNodePort (LoadBalancer services with externalTrafficPolicy Local), the way
// kube-proxy does: 200 while this node has a usable local endpoint for the service, 503
// otherwise, so the load balancer only sends traffic to nodes that can serve it locally.
package healthserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Want lists, per health-check node port, the service it answers for and its local endpoint
// count, from st.
func Want(st *model.State) map[uint16]Entry {
	out := map[uint16]Entry{}
	for _, s := range st.Services {
		if s.HealthCheckNodePort == 0 || !s.ExternalTrafficPolicyLocal || !s.ExternallyReachable() {
			continue
		}
		n := 0
		for i := range s.Ports {
			c := model.CategorizeEndpoints(s, &s.Ports[i], st.NodeName, st.Zone)
			n = max(n, len(c.Local))
		}
		out[s.HealthCheckNodePort] = Entry{Service: s.Key, LocalEndpoints: n}
	}
	return out
}

// Entry is what one port answers for.
type Entry struct {
	Service        model.ServiceKey
	LocalEndpoints int
}

// Server runs one listener per health-check node port.
type Server struct {
	log *slog.Logger
	// Listen opens a listener for a port (default: TCP on every address).
	listen func(port uint16) (net.Listener, error)

	mu        sync.Mutex
	entries   map[uint16]Entry
	listeners map[uint16]*http.Server
}

// New returns a server with nothing to serve yet.
func New(log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{log: log, entries: map[uint16]Entry{}, listeners: map[uint16]*http.Server{},
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
		code := http.StatusOK
		if !ok || e.LocalEndpoints == 0 {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"service":             map[string]string{"namespace": e.Service.Namespace, "name": e.Service.Name},
			"localEndpoints":      e.LocalEndpoints,
			"serviceProxyHealthy": true,
		})
	})
}
