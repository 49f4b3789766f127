package runner

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
)

// dialIn returns a dialer whose sockets are created inside the named network namespace (on
// an OS thread switched there and back), so the runner can scrape /metrics and /readyz that
// daemons bind to 127.0.0.1 of their node namespace.
func dialIn(nsName string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, fmt.Errorf("netns of this thread: %w", err)}
				return
			}
			defer orig.Close()
			target, err := netns.GetFromName(nsName)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, fmt.Errorf("open netns %s: %w", nsName, err)}
				return
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, fmt.Errorf("enter netns %s: %w", nsName, err)}
				return
			}
			c, derr := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			if err := netns.Set(orig); err == nil {
				runtime.UnlockOSThread() // else the thread stays locked and dies with this goroutine
			}
			ch <- res{c, derr}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// nsHTTP is an HTTP client living in one namespace.
type nsHTTP struct{ c *http.Client }

func newNSHTTP(nsName string) *nsHTTP {
	return &nsHTTP{c: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: dialIn(nsName), DisableKeepAlives: true},
	}}
}

// get returns the status code and body of GET url.
func (h *nsHTTP) get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := h.c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
