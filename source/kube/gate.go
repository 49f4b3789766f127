package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// DefaultMaxGateWait bounds how long an informer's list or watch call waits for the probe
// before trying the API server anyway (a probe that never succeeds, e.g. /readyz refused by a
// proxy, must not hold the informers back for ever): client-go's own backoff cap.
const DefaultMaxGateWait = 30 * time.Second

// apiGate holds the informers' list and watch calls back while the API server is known to be
// unreachable, and releases all of them at once when the /readyz probe sees it answer again.
//
// Without it, client-go's reflectors retry a failed list or watch with an exponential backoff
// that reaches 30 s (plus up to as much jitter) within half a minute of outage, so an informer
// reconnects up to a minute after the API server is back. With it, each informer makes one
// failing call per outage and then waits here; its reflector never sees the failure, so its
// backoff does not grow.
type apiGate struct {
	mu   sync.Mutex
	down bool
	open chan struct{} // closed while the API is taken to be reachable
}

func newAPIGate() *apiGate {
	open := make(chan struct{})
	close(open)
	return &apiGate{open: open}
}

// fail marks the API server unreachable; it reports whether it was taken to be reachable
// before.
func (g *apiGate) fail() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.down {
		return false
	}
	g.down = true
	g.open = make(chan struct{})
	return true
}

// up marks the API server reachable and releases every waiting call; it reports whether it was
// taken to be unreachable before.
func (g *apiGate) up() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.down {
		return false
	}
	g.down = false
	close(g.open)
	return true
}

// isDown reports whether the API server is taken to be unreachable.
func (g *apiGate) isDown() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.down
}

// wait returns nil at once while the API server is taken to be reachable. Otherwise it waits
// until up is called or maxWait has passed (nil: try anyway), or ctx ends (ctx.Err()).
func (g *apiGate) wait(ctx context.Context, maxWait time.Duration) error {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	default:
	}
	t := time.NewTimer(maxWait)
	defer t.Stop()
	select {
	case <-open:
		return nil
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unreachable reports whether err means the API server did not answer: a transport error
// (connection refused or reset, timeout, TLS) rather than an API status, or a 502/503 from a
// proxy or load balancer in front of it. Other statuses (410 Gone, 429, 403, ...) are answers,
// left to the reflector's own handling.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		c := st.Status().Code
		return c == http.StatusBadGateway || c == http.StatusServiceUnavailable
	}
	return true
}

// gated wraps one list or watch call of an informer: it waits while the API server is taken to
// be unreachable, and when the call fails because the API server does not answer it marks the
// gate closed, records the error and waits again, instead of returning the error to the
// reflector (whose backoff would then grow). Successful calls count as contact and open the
// gate. It returns only a result, an error that is an answer of the API server, or ctx's error.
func gated[T any](ctx context.Context, s *Source, what string, call func(context.Context) (T, error)) (T, error) {
	for {
		if err := s.gate.wait(ctx, s.maxGateWait); err != nil {
			var zero T
			return zero, err
		}
		v, err := call(ctx)
		if ctx.Err() != nil || !unreachable(err) {
			if err == nil {
				s.touch()
				if s.gate.up() {
					s.log.Info("API server answers again", "via", what)
				}
			}
			return v, err
		}
		s.setErr(fmt.Errorf("%s: %w", what, err))
		if s.gate.fail() {
			s.log.Warn("API server unreachable; informers wait for it to answer /readyz", "via", what, "err", err)
		} else {
			s.log.Debug("API server still unreachable", "via", what, "err", err)
		}
	}
}
