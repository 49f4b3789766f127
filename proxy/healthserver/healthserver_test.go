package healthserver

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func lbService(name string, port uint16, eps ...model.Endpoint) *model.Service {
	return &model.Service{Key: model.ServiceKey{Namespace: "default", Name: name}, Type: model.LoadBalancer,
		ExternalTrafficPolicyLocal: true, HealthCheckNodePort: port,
		Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, NodePort: 30080, Endpoints: eps}}}
}

func TestWant(t *testing.T) {
	local := model.Endpoint{IP: netip.MustParseAddr("10.244.1.2"), Port: 80, NodeName: "n1", Ready: true, Serving: true}
	remote := model.Endpoint{IP: netip.MustParseAddr("10.244.2.2"), Port: 80, NodeName: "n2", Ready: true, Serving: true}
	st := &model.State{NodeName: "n1", Services: []*model.Service{
		lbService("a", 32001, local, remote), lbService("b", 32002, remote),
		{Key: model.ServiceKey{Namespace: "default", Name: "cluster"}, Type: model.LoadBalancer, HealthCheckNodePort: 32003},
	}}
	w := Want(st)
	if len(w) != 2 || w[32001].LocalEndpoints != 1 || w[32002].LocalEndpoints != 0 {
		t.Fatalf("want = %+v", w)
	}
}

// TestWantCountsReadyLocalEndpoints: kube-proxy counts ready local endpoints only, once per
// address across the service's ports. A draining node (only terminating local endpoints, still
// serving) must count 0 so the load balancer stops sending it new connections.
func TestWantCountsReadyLocalEndpoints(t *testing.T) {
	ep := func(ip string, port uint16, node string, ready, serving, term bool) model.Endpoint {
		return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, NodeName: node, Ready: ready, Serving: serving, Terminating: term}
	}
	draining := lbService("draining", 32001, ep("10.244.1.2", 80, "n1", false, true, true), ep("10.244.2.2", 80, "n2", true, true, false))
	mixed := lbService("mixed", 32002, ep("10.244.1.3", 80, "n1", true, true, false), ep("10.244.1.4", 80, "n1", false, true, true),
		ep("10.244.1.5", 80, "n1", false, false, false))
	twoPorts := lbService("two-ports", 32003, ep("10.244.1.6", 80, "n1", true, true, false), ep("10.244.1.7", 80, "n1", true, true, false))
	twoPorts.Ports = append(twoPorts.Ports, model.ServicePort{Name: "tls", Protocol: model.TCP, Port: 443, NodePort: 30443,
		Endpoints: []model.Endpoint{ep("10.244.1.6", 443, "n1", true, true, false), ep("10.244.1.8", 443, "n1", true, true, false)}})
	w := Want(&model.State{NodeName: "n1", Services: []*model.Service{draining, mixed, twoPorts}})
	for port, n := range map[uint16]int{32001: 0, 32002: 1, 32003: 3} {
		if w[port].LocalEndpoints != n {
			t.Errorf("port %d (%s): %d local endpoints, want %d", port, w[port].Service.Name, w[port].LocalEndpoints, n)
		}
	}
}

// TestServe uses an in-memory listener: no socket on any address.
func TestServe(t *testing.T) {
	s := New(nil, nil)
	pipes := map[uint16]*pipeListener{}
	s.listen = func(port uint16) (net.Listener, error) {
		l := newPipeListener()
		pipes[port] = l
		return l, nil
	}
	key := model.ServiceKey{Namespace: "default", Name: "a"}
	if err := s.Sync(map[uint16]Entry{32001: {key, 2}, 32002: {key, 0}}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	get := func(port uint16) (int, string) {
		code, body, _ := getPort(t, pipes[port])
		return code, body
	}
	if code, body := get(32001); code != 200 || !strings.Contains(body, `"localEndpoints":2`) {
		t.Errorf("port with local endpoints: %d %s", code, body)
	}
	if code, _ := get(32002); code != 503 {
		t.Errorf("port without local endpoints: %d", code)
	}
	if err := s.Sync(map[uint16]Entry{32002: {key, 1}}); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(32002); code != 200 {
		t.Errorf("after an endpoint appeared: %d", code)
	}
	if _, err := pipes[32001].dial(); err == nil {
		t.Error("a port no longer wanted must stop listening")
	}
}

func getPort(t *testing.T, l *pipeListener) (int, string, http.Header) {
	t.Helper()
	cl := http.Client{Transport: &http.Transport{Dial: func(string, string) (net.Conn, error) { return l.dial() }}}
	resp, err := cl.Get("http://node/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestAnswerCarriesProxyHealthAndWeight: kube-proxy's answer: 200 only with a ready local
// endpoint and a healthy proxy; the body names the service, the count and serviceProxyHealthy;
// X-Load-Balancing-Endpoint-Weight is the count.
func TestAnswerCarriesProxyHealthAndWeight(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	s := New(nil, healthy.Load)
	pipes := map[uint16]*pipeListener{}
	s.listen = func(port uint16) (net.Listener, error) {
		pipes[port] = newPipeListener()
		return pipes[port], nil
	}
	key := model.ServiceKey{Namespace: "ns", Name: "web"}
	if err := s.Sync(map[uint16]Entry{32001: {key, 3}, 32002: {key, 0}}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type answer struct {
		Service struct {
			Namespace, Name string
		}
		LocalEndpoints      int
		ServiceProxyHealthy bool
	}
	check := func(what string, port uint16, wantCode, wantN int, wantHealthy bool) {
		t.Helper()
		code, body, h := getPort(t, pipes[port])
		var a answer
		if err := json.Unmarshal([]byte(body), &a); err != nil {
			t.Fatalf("%s: body %q: %v", what, body, err)
		}
		if code != wantCode || a.LocalEndpoints != wantN || a.ServiceProxyHealthy != wantHealthy ||
			a.Service.Namespace != "ns" || a.Service.Name != "web" {
			t.Errorf("%s: %d %s, want %d with %d endpoints, serviceProxyHealthy %v", what, code, body, wantCode, wantN, wantHealthy)
		}
		if got := h.Get("X-Load-Balancing-Endpoint-Weight"); got != strconv.Itoa(wantN) {
			t.Errorf("%s: X-Load-Balancing-Endpoint-Weight %q, want %d", what, got, wantN)
		}
		if h.Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", what, h.Get("Content-Type"))
		}
	}
	check("healthy with endpoints", 32001, 200, 3, true)
	check("healthy without endpoints", 32002, 503, 0, true)
	healthy.Store(false)
	check("unhealthy proxy with endpoints", 32001, 503, 3, false)
}

type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}
func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}
func (p *pipeListener) Close() error {
	select {
	case <-p.closed:
	default:
		close(p.closed)
	}
	return nil
}
func (p *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }
func (p *pipeListener) dial() (net.Conn, error) {
	a, b := net.Pipe()
	select {
	case p.conns <- b:
		return a, nil
	case <-p.closed:
		return nil, net.ErrClosed
	}
}
