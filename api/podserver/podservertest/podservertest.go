// Package podservertest provides an in-memory podserver.PodIPAM and a pod API server on a unix
// socket, for tests of svcproxy-cni and the pod API. It is a test double: nothing is
// persisted and there is no cooldown; the daemon uses the real ipam store.
package podservertest

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
)

// MemIPAM hands out the addresses of its ranges in order, one per range per attachment,
// skipping each range's network address, gateway and (IPv4) broadcast address.
type MemIPAM struct {
	ranges []podserver.Range

	mu     sync.Mutex
	owners map[podserver.Attachment]*entry
	used   map[netip.Addr]podserver.Attachment
	calls  map[string]int
}

type entry struct {
	pod   podserver.Pod
	addrs []netip.Addr
}

// NewMemIPAM returns an empty allocator over the ranges of n.
func NewMemIPAM(n podserver.Network) *MemIPAM {
	return &MemIPAM{
		ranges: slices.Clone(n.Ranges),
		owners: map[podserver.Attachment]*entry{},
		used:   map[netip.Addr]podserver.Attachment{},
		calls:  map[string]int{},
	}
}

func usable(r podserver.Range, a netip.Addr) bool {
	if a == r.Gateway || a == r.Prefix.Masked().Addr() {
		return false
	}
	if a.Is4() && !r.Prefix.Contains(a.Next()) { // broadcast
		return false
	}
	return r.Prefix.Contains(a)
}

func (m *MemIPAM) free(r podserver.Range) (netip.Addr, bool) {
	for a := r.Prefix.Masked().Addr(); r.Prefix.Contains(a); a = a.Next() {
		if _, taken := m.used[a]; !taken && usable(r, a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// Allocate implements podserver.PodIPAM.
func (m *MemIPAM) Allocate(_ context.Context, p podserver.Pod) ([]netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls["allocate"]++
	if e, ok := m.owners[p.Attachment]; ok {
		e.pod = p
		return slices.Clone(e.addrs), nil
	}
	var addrs []netip.Addr
	for _, r := range m.ranges {
		a, ok := m.free(r)
		if !ok {
			return nil, fmt.Errorf("memipam: no free address in %s: %w", r.Prefix, podserver.ErrExhausted)
		}
		addrs = append(addrs, a)
	}
	for _, a := range addrs {
		m.used[a] = p.Attachment
	}
	m.owners[p.Attachment] = &entry{pod: p, addrs: addrs}
	return slices.Clone(addrs), nil
}

// Release implements podserver.PodIPAM.
func (m *MemIPAM) Release(_ context.Context, a podserver.Attachment) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls["release"]++
	m.drop(a)
	return nil
}

func (m *MemIPAM) drop(a podserver.Attachment) {
	if e, ok := m.owners[a]; ok {
		for _, ip := range e.addrs {
			delete(m.used, ip)
		}
		delete(m.owners, a)
	}
}

// Check implements podserver.PodIPAM.
func (m *MemIPAM) Check(_ context.Context, a podserver.Attachment) ([]netip.Addr, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls["check"]++
	e, ok := m.owners[a]
	if !ok {
		return nil, fmt.Errorf("memipam: %s: %w", a, podserver.ErrNotFound)
	}
	return slices.Clone(e.addrs), nil
}

// GC implements podserver.PodIPAM.
func (m *MemIPAM) GC(_ context.Context, valid []podserver.Attachment) ([]podserver.Released, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls["gc"]++
	var out []podserver.Released
	for a, e := range m.owners {
		if slices.Contains(valid, a) {
			continue
		}
		out = append(out, podserver.Released{Attachment: a, Namespace: e.pod.Namespace, Name: e.pod.Name, Addrs: slices.Clone(e.addrs)})
		m.drop(a)
	}
	slices.SortFunc(out, func(x, y podserver.Released) int { return x.Addrs[0].Compare(y.Addrs[0]) })
	return out, nil
}

// Ready implements podserver.PodIPAM: not ready when a range has no free address.
func (m *MemIPAM) Ready(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.ranges {
		if _, ok := m.free(r); !ok {
			return fmt.Errorf("no free pod IP left in %s: %w", r.Prefix, podserver.ErrExhausted)
		}
	}
	return nil
}

// Pods returns the current allocations by attachment.
func (m *MemIPAM) Pods() map[podserver.Attachment]podserver.Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[podserver.Attachment]podserver.Pod{}
	for a, e := range m.owners {
		out[a] = e.pod
	}
	return out
}

// Addrs returns the addresses held by a (nil when none).
func (m *MemIPAM) Addrs(a podserver.Attachment) []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.owners[a]; ok {
		return slices.Clone(e.addrs)
	}
	return nil
}

// Calls returns how often a method was called ("allocate", "release", "check", "gc").
func (m *MemIPAM) Calls(method string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[method]
}

// Server is a pod API server on a unix socket.
type Server struct {
	// Socket is the path of the unix socket.
	Socket string
	srv    *http.Server
	done   chan error
	once   sync.Once
}

// Start serves podserver.New(ipam, n, nil) on a fresh socket in tb.TempDir() (through
// api.Listen, so with the daemon's mode 0600) until Stop or the end of the test.
func Start(tb testing.TB, ipam podserver.PodIPAM, n podserver.Network) *Server {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "svcproxy.sock")
	l, err := api.Listen(sock)
	if err != nil {
		tb.Fatalf("podservertest: %v", err)
	}
	s := &Server{Socket: sock, srv: &http.Server{Handler: podserver.New(ipam, n, nil), ReadHeaderTimeout: 10 * time.Second}, done: make(chan error, 1)}
	go func() { s.done <- s.srv.Serve(l) }()
	tb.Cleanup(s.Stop)
	return s
}

// Stop closes the listener and waits for the server to end; later calls do nothing.
func (s *Server) Stop() {
	s.once.Do(func() {
		_ = s.srv.Close()
		<-s.done // http.ErrServerClosed
	})
}
