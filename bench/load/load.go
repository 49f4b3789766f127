// Package load is the benchmark's data path: a server run in each pod (one line per TCP
// connection, and a sink that swallows a stream), a connection-rate generator (a fresh TCP
// connection per request, N workers, bounded by count and duration), a single-stream
// throughput client, and a watcher that connects until a given pod answers (to time how long
// an endpoint change takes to reach the kernel). The runner executes them through the
// svcbench binary inside network namespaces; every loop here is bounded.
package load

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Serve answers each connection accepted on any of lines with "NAME\n" and closes it, and
// swallows everything sent to sink. It returns when ctx ends.
func Serve(ctx context.Context, name string, lines []net.Listener, sink net.Listener) error {
	var wg sync.WaitGroup
	accept := func(ln net.Listener, handle func(net.Conn)) {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}
	msg := []byte(name + "\n")
	for _, line := range lines {
		wg.Add(1)
		go accept(line, func(c net.Conn) {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(msg)
		})
	}
	wg.Add(1)
	go accept(sink, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c)
	})
	<-ctx.Done()
	for _, line := range lines {
		line.Close()
	}
	sink.Close()
	wg.Wait()
	return nil
}

// RateSpec bounds a connection-rate run.
type RateSpec struct {
	Addr     string
	Workers  int
	Duration time.Duration
	// Max connections in all (a bound, not a target).
	Max     int
	Timeout time.Duration
}

// RateResult is what a run measured. Latencies are of the whole request: connect, read the
// server's line, close.
type RateResult struct {
	OK      int            `json:"ok"`
	Failed  int            `json:"failed"`
	Errors  map[string]int `json:"errors,omitempty"`
	Elapsed float64        `json:"elapsedSeconds"`
	Rate    float64        `json:"connsPerSecond"`
	P50     float64        `json:"p50Seconds"`
	P99     float64        `json:"p99Seconds"`
	Replies map[string]int `json:"replies"`
}

// Rate runs the connection-rate generator.
func Rate(ctx context.Context, spec RateSpec) (RateResult, error) {
	if spec.Workers < 1 || spec.Duration <= 0 || spec.Max < 1 || spec.Addr == "" {
		return RateResult{}, errors.New("load: rate needs an address, workers >= 1, a duration and max >= 1")
	}
	if spec.Timeout <= 0 {
		spec.Timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, spec.Duration)
	defer cancel()
	var issued atomic.Int64
	type part struct {
		lat     []float64
		replies map[string]int
		errs    map[string]int
	}
	parts := make([]part, spec.Workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range parts {
		parts[w] = part{lat: make([]float64, 0, 4096), replies: map[string]int{}, errs: map[string]int{}}
		wg.Add(1)
		go func(p *part) {
			defer wg.Done()
			for ctx.Err() == nil && issued.Add(1) <= int64(spec.Max) {
				t0 := time.Now()
				name, err := Once(spec.Addr, spec.Timeout)
				if err != nil {
					if ctx.Err() != nil {
						return // cut by the end of the run, not a failure
					}
					p.errs[errClass(err)]++
					continue
				}
				p.lat = append(p.lat, time.Since(t0).Seconds())
				p.replies[name]++
			}
		}(&parts[w])
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	res := RateResult{Replies: map[string]int{}, Errors: map[string]int{}, Elapsed: elapsed}
	var lat []float64
	for _, p := range parts {
		lat = append(lat, p.lat...)
		for k, v := range p.replies {
			res.Replies[k] += v
		}
		for k, v := range p.errs {
			res.Errors[k] += v
			res.Failed += v
		}
	}
	res.OK = len(lat)
	res.Rate = float64(res.OK) / elapsed
	if len(lat) > 0 {
		sort.Float64s(lat)
		res.P50 = lat[len(lat)*50/100]
		res.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return res, nil
}

// Once makes one connection to addr and returns the line the server sent.
func Once(addr string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	line, err := bufio.NewReaderSize(c, 64).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	return strings.TrimSpace(line), nil
}

func errClass(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "refused"):
		return "refused"
	case strings.Contains(err.Error(), "unreachable"):
		return "unreachable"
	}
	return "other"
}

// StreamResult is a single stream's throughput.
type StreamResult struct {
	Bytes   int64   `json:"bytes"`
	Elapsed float64 `json:"elapsedSeconds"`
	Gbps    float64 `json:"gbitPerSecond"`
}

// Stream sends to a sink at addr over one connection for d and reports the throughput.
func Stream(ctx context.Context, addr string, d time.Duration) (StreamResult, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return StreamResult{}, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	end := start.Add(d)
	c.SetWriteDeadline(end)
	var n int64
	for time.Now().Before(end) && ctx.Err() == nil {
		k, err := c.Write(buf)
		n += int64(k)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				break
			}
			return StreamResult{}, err
		}
	}
	el := time.Since(start).Seconds()
	return StreamResult{Bytes: n, Elapsed: el, Gbps: float64(n) * 8 / el / 1e9}, nil
}

// WatchResult says when the wanted pod first answered.
type WatchResult struct {
	SeenUnixNano int64 `json:"seenUnixNano"`
	Attempts     int   `json:"attempts"`
}

// Watch connects to addr every interval until the server named want (any, when "") answers,
// or timeout.
func Watch(ctx context.Context, addr, want string, interval, timeout time.Duration) (WatchResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := WatchResult{}
	for ctx.Err() == nil {
		res.Attempts++
		name, err := Once(addr, 200*time.Millisecond)
		if err == nil && (want == "" || name == want) {
			res.SeenUnixNano = time.Now().UnixNano()
			return res, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
	return res, fmt.Errorf("load: %s did not answer on %s within %v (%d attempts)", want, addr, timeout, res.Attempts)
}
