package healthserver

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
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

// TestServe uses an in-memory listener: no socket on any address.
func TestServe(t *testing.T) {
	s := New(nil)
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
		cl := http.Client{Transport: &http.Transport{Dial: func(string, string) (net.Conn, error) { return pipes[port].dial() }}}
		resp, err := cl.Get("http://node/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
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
