// Package healthcheck runs the active endpoint health checks a config file may ask for (like
// keepalived's or HAProxy's: TCP connect or HTTP GET, interval, timeout, rise and fall
// thresholds). An endpoint that fails its check is marked not ready in the desired state, so the
// backends stop sending new connections to it; it comes back after enough successes.
package healthcheck

import (
	"context"
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

// Spec is one service's health check.
type Spec struct {
	Type string // "tcp" or "http"
	// Port to check; 0 means the endpoint's own port.
	Port               uint16
	Path               string // for http; default "/"
	Interval, Timeout  time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

func (s Spec) withDefaults() Spec {
	if s.Interval <= 0 {
		s.Interval = 2 * time.Second
	}
	if s.Timeout <= 0 {
		s.Timeout = time.Second
	}
	if s.HealthyThreshold <= 0 {
		s.HealthyThreshold = 2
	}
	if s.UnhealthyThreshold <= 0 {
		s.UnhealthyThreshold = 3
	}
	if s.Path == "" {
		s.Path = "/"
	}
	return s
}

// Target is one endpoint of one service to check.
type Target struct {
	Service model.ServiceKey
	Addr    netip.AddrPort // the endpoint; Spec.Port, when set, replaces the port
	Spec    Spec
}

func (t Target) checkAddr() netip.AddrPort {
	if t.Spec.Port != 0 {
		return netip.AddrPortFrom(t.Addr.Addr(), t.Spec.Port)
	}
	return t.Addr
}

// Probe checks one address once; it returns nil when healthy.
type Probe func(ctx context.Context, spec Spec, addr netip.AddrPort) error

// DefaultProbe connects over TCP, and for http sends GET Path and wants a 2xx or 3xx answer.
func DefaultProbe(ctx context.Context, spec Spec, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	switch spec.Type {
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+spec.Path, nil)
		if err != nil {
			return err
		}
		cl := http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := cl.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	default:
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		return c.Close()
	}
}

type key struct {
	svc  model.ServiceKey
	addr netip.AddrPort
}

type prober struct {
	target   Target
	cancel   context.CancelFunc
	healthy  bool
	ok, fail int
	lastErr  string
}

// Checker runs the checks of a set of targets. Create it with New; set targets with Set.
type Checker struct {
	probe    Probe
	onChange func()
	log      *slog.Logger

	mu      sync.Mutex
	ctx     context.Context
	probers map[key]*prober
}

// New returns a checker whose probers live until ctx ends. onChange is called (from a prober's
// goroutine) whenever an endpoint turns healthy or unhealthy. probe may be nil (DefaultProbe).
func New(ctx context.Context, probe Probe, onChange func(), log *slog.Logger) *Checker {
	if probe == nil {
		probe = DefaultProbe
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{probe: probe, onChange: onChange, log: log, ctx: ctx, probers: map[key]*prober{}}
}

// Set replaces the targets: new ones start (healthy until proven otherwise, so a restart does
// not black out a service), gone ones stop, unchanged ones keep their state.
func (c *Checker) Set(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[key]Target{}
	for _, t := range targets {
		t.Spec = t.Spec.withDefaults()
		want[key{t.Service, t.Addr}] = t
	}
	for k, p := range c.probers {
		if t, ok := want[k]; !ok || t.Spec != p.target.Spec {
			p.cancel()
			delete(c.probers, k)
		}
	}
	for k, t := range want {
		if _, ok := c.probers[k]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		p := &prober{target: t, cancel: cancel, healthy: true}
		c.probers[k] = p
		go c.run(ctx, k, p)
	}
}

func (c *Checker) run(ctx context.Context, k key, p *prober) {
	spec := p.target.Spec
	t := time.NewTicker(spec.Interval)
	defer t.Stop()
	for {
		err := c.probe(ctx, spec, p.target.checkAddr())
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		changed := false
		if err == nil {
			p.ok, p.fail, p.lastErr = p.ok+1, 0, ""
			if !p.healthy && p.ok >= spec.HealthyThreshold {
				p.healthy, changed = true, true
			}
		} else {
			p.ok, p.fail, p.lastErr = 0, p.fail+1, err.Error()
			if p.healthy && p.fail >= spec.UnhealthyThreshold {
				p.healthy, changed = false, true
			}
		}
		healthy := p.healthy
		c.mu.Unlock()
		if changed {
			c.log.Info("endpoint health changed", "service", k.svc.String(), "endpoint", k.addr.String(),
				"healthy", healthy, "err", err)
			if c.onChange != nil {
				c.onChange()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Healthy reports whether the endpoint of svc passes its check; endpoints without a check are
// healthy.
func (c *Checker) Healthy(svc model.ServiceKey, addr netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.probers[key{svc, addr}]
	return !ok || p.healthy
}

// Targets lists the targets for every endpoint of every service in st that has a spec in specs.
func Targets(st *model.State, specs map[model.ServiceKey]Spec) []Target {
	var out []Target
	seen := map[key]bool{}
	for _, s := range st.Services {
		spec, ok := specs[s.Key]
		if !ok {
			continue
		}
		for _, p := range s.Ports {
			for _, e := range p.Endpoints {
				k := key{s.Key, e.AddrPort()}
				if spec.Port != 0 {
					k.addr = netip.AddrPortFrom(e.IP, spec.Port)
				}
				if seen[k] {
					continue
				}
				seen[k] = true
				out = append(out, Target{Service: s.Key, Addr: k.addr, Spec: spec})
			}
		}
	}
	return out
}

// Apply marks every endpoint of st that fails its check as not ready (and not serving), in place.
func (c *Checker) Apply(st *model.State, specs map[model.ServiceKey]Spec) {
	for _, s := range st.Services {
		spec, ok := specs[s.Key]
		if !ok {
			continue
		}
		for i := range s.Ports {
			for j := range s.Ports[i].Endpoints {
				e := &s.Ports[i].Endpoints[j]
				addr := e.AddrPort()
				if spec.Port != 0 {
					addr = netip.AddrPortFrom(e.IP, spec.Port)
				}
				if !c.Healthy(s.Key, addr) {
					e.Ready, e.Serving = false, false
				}
			}
		}
	}
}

// String describes the checker's state, for logs.
func (c *Checker) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, bad := len(c.probers), 0
	for _, p := range c.probers {
		if !p.healthy {
			bad++
		}
	}
	return strconv.Itoa(n) + " checks, " + strconv.Itoa(bad) + " failing"
}
