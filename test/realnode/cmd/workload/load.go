package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	kindHTTP      = "http"
	kindTCPStream = "tcp-stream"
	kindUDP       = "udp"

	maxParallel        = 64 // workers and streams
	defaultMaxRequests = 200000
	limitMaxRequests   = 1000000
	maxErrorSamples    = 20
	defaultDuration    = 10 * time.Second
	limitDuration      = 24 * time.Hour
	defaultInterval    = 20 * time.Millisecond
	minInterval        = time.Millisecond
	defaultTimeout     = 2 * time.Second
	limitTimeout       = 5 * time.Minute
)

// Duration is a time.Duration that JSON carries as a Go duration string ("20ms"). It also
// accepts an integer number of nanoseconds, which is how encoding/json writes a time.Duration.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration %s: want a string such as \"20ms\" or integer nanoseconds", b)
	}
	*d = Duration(n)
	return nil
}

// Spec is one load run: the JSON body of POST /run, and the flags of `workload run`.
type Spec struct {
	Target      string   `json:"target"`
	Kind        string   `json:"kind"`
	Duration    Duration `json:"duration"`
	Workers     int      `json:"workers"`
	Streams     int      `json:"streams"`
	Interval    Duration `json:"interval"`
	Timeout     Duration `json:"timeout"`
	MaxRequests int      `json:"maxRequests"`
	Path        string   `json:"path,omitempty"`
}

// normalize checks s and fills in the defaults.
func (s *Spec) normalize() error {
	switch s.Kind {
	case kindHTTP, kindTCPStream, kindUDP:
	default:
		return fmt.Errorf("kind %q: want http, tcp-stream or udp", s.Kind)
	}
	if _, port, err := net.SplitHostPort(s.Target); err != nil || port == "" {
		return fmt.Errorf("target %q: want HOST:PORT", s.Target)
	}
	var err error
	defaults := func(name string, v *Duration, def, lo, hi time.Duration) {
		switch {
		case *v < 0 || time.Duration(*v) > hi:
			err = errors.Join(err, fmt.Errorf("%s %v: want 0 (default %v) to %v", name, time.Duration(*v), def, hi))
		case *v == 0:
			*v = Duration(def)
		case time.Duration(*v) < lo:
			*v = Duration(lo)
		}
	}
	defaults("duration", &s.Duration, defaultDuration, 0, limitDuration)
	defaults("interval", &s.Interval, defaultInterval, minInterval, limitDuration)
	defaults("timeout", &s.Timeout, defaultTimeout, 0, limitTimeout)
	count := func(name string, v *int, def, hi int) {
		switch {
		case *v < 0:
			err = errors.Join(err, fmt.Errorf("%s %d: negative", name, *v))
		case *v == 0:
			*v = def
		case *v > hi:
			*v = hi
		}
	}
	count("workers", &s.Workers, 1, maxParallel)
	count("streams", &s.Streams, 1, maxParallel)
	count("maxRequests", &s.MaxRequests, defaultMaxRequests, limitMaxRequests)
	if s.Kind == kindHTTP {
		if s.Path == "" {
			s.Path = "/"
		}
		if !strings.HasPrefix(s.Path, "/") {
			err = errors.Join(err, fmt.Errorf("path %q: want an absolute path", s.Path))
		}
	} else {
		s.Path = ""
	}
	return err
}

// Failures counts failed requests by cause.
type Failures struct {
	Refused     int `json:"refused"`
	Timeout     int `json:"timeout"`
	Reset       int `json:"reset"`
	Unreachable int `json:"unreachable"`
	Other       int `json:"other"`
}

// ErrorAt is one failure: when it was seen (offset from the start of the run) and its message.
type ErrorAt struct {
	At  Duration `json:"at"`
	Err string   `json:"err"`
}

// Seen is when the first reply from a backend arrived (offset from the start of the run).
type Seen struct {
	Name string   `json:"name"`
	At   Duration `json:"at"`
}

// Result is what a run reports: GET /run/ID, and the output of `workload run`.
type Result struct {
	ID         string         `json:"id,omitempty"`
	Done       bool           `json:"done"`
	Error      string         `json:"error,omitempty"`
	Kind       string         `json:"kind"`
	Target     string         `json:"target"`
	Spec       Spec           `json:"spec"`
	Sent       int            `json:"sent"`
	OK         int            `json:"ok"`
	Failed     int            `json:"failed"`
	InFlight   int            `json:"inFlight"`
	Failures   Failures       `json:"failures"`
	Errors     []ErrorAt      `json:"errors"`
	Backends   map[string]int `json:"backends"`
	Reconnects int            `json:"reconnects"`
	LongestGap Duration       `json:"longestGap"`
	FirstSeen  []Seen         `json:"firstSeen"`
	Started    time.Time      `json:"started"`
	Duration   Duration       `json:"duration"`
}

// outcome is one finished request, for longestGap: when it was sent and whether it succeeded.
type outcome struct {
	at time.Duration
	ok bool
}

// run is one load run and its counters.
type run struct {
	id      string
	spec    Spec
	started time.Time
	stop    chan struct{} // closed once no new request may start
	stopped sync.Once
	done    chan struct{} // closed once the result is final

	mu         sync.Mutex
	runErr     string
	sent       int
	ok         int
	failed     int
	failures   Failures
	errors     []ErrorAt
	backends   map[string]int
	reconnects int
	firstSeen  []Seen
	outcomes   []outcome
	elapsed    time.Duration // set when done
	finished   bool
}

// newRun prepares a run of a normalized spec; execute runs it.
func newRun(id string, spec Spec) *run {
	return &run{
		id:        id,
		spec:      spec,
		started:   time.Now(),
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		errors:    []ErrorAt{},
		backends:  map[string]int{},
		firstSeen: []Seen{},
	}
}

// stopSending ends the run early: no new request starts, the ones in flight finish.
func (r *run) stopSending() { r.stopped.Do(func() { close(r.stop) }) }

// execute runs the load until the duration has passed, maxRequests were sent or stopSending
// was called, then waits for the requests in flight.
func (r *run) execute() {
	t := time.AfterFunc(time.Until(r.started.Add(time.Duration(r.spec.Duration))), r.stopSending)
	switch r.spec.Kind {
	case kindHTTP:
		r.runHTTP()
	case kindTCPStream:
		r.runTCPStreams()
	case kindUDP:
		r.runUDP()
	}
	t.Stop()
	r.stopSending()
	r.mu.Lock()
	r.elapsed = time.Since(r.started)
	r.finished = true
	r.mu.Unlock()
	close(r.done)
}

// begin reserves the next request; false once the run must stop.
func (r *run) begin() bool {
	select {
	case <-r.stop:
		return false
	default:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent >= r.spec.MaxRequests {
		r.stopSending()
		return false
	}
	r.sent++
	return true
}

// succeeded records a reply from backend name to the request sent at start.
func (r *run) succeeded(start time.Time, name string) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ok++
	if _, seen := r.backends[name]; !seen {
		r.firstSeen = append(r.firstSeen, Seen{Name: name, At: r.offset(now)})
	}
	r.backends[name]++
	r.outcomes = append(r.outcomes, outcome{at: start.Sub(r.started), ok: true})
}

// failedWith records the failure of the request sent at start.
func (r *run) failedWith(start time.Time, err error) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed++
	switch classify(err) {
	case "refused":
		r.failures.Refused++
	case "timeout":
		r.failures.Timeout++
	case "reset":
		r.failures.Reset++
	case "unreachable":
		r.failures.Unreachable++
	default:
		r.failures.Other++
	}
	if len(r.errors) < maxErrorSamples {
		r.errors = append(r.errors, ErrorAt{At: r.offset(now), Err: err.Error()})
	}
	r.outcomes = append(r.outcomes, outcome{at: start.Sub(r.started), ok: false})
}

func (r *run) reconnected() {
	r.mu.Lock()
	r.reconnects++
	r.mu.Unlock()
}

func (r *run) setError(err error) {
	r.mu.Lock()
	r.runErr = err.Error()
	r.mu.Unlock()
}

func (r *run) offset(t time.Time) Duration { return Duration(t.Sub(r.started).Round(time.Microsecond)) }

// snapshot returns the result so far (final once done is closed).
func (r *run) snapshot() Result {
	r.mu.Lock()
	res := Result{
		ID:         r.id,
		Done:       r.finished,
		Error:      r.runErr,
		Kind:       r.spec.Kind,
		Target:     r.spec.Target,
		Spec:       r.spec,
		Sent:       r.sent,
		OK:         r.ok,
		Failed:     r.failed,
		InFlight:   r.sent - r.ok - r.failed,
		Failures:   r.failures,
		Errors:     slices.Clone(r.errors),
		Backends:   make(map[string]int, len(r.backends)),
		Reconnects: r.reconnects,
		FirstSeen:  slices.Clone(r.firstSeen),
		Started:    r.started,
	}
	for k, v := range r.backends {
		res.Backends[k] = v
	}
	end := r.elapsed
	if !r.finished {
		end = time.Since(r.started)
	}
	outcomes := slices.Clone(r.outcomes)
	r.mu.Unlock()
	res.Duration = Duration(end.Round(time.Microsecond))
	res.LongestGap = Duration(longestGap(outcomes, end).Round(time.Microsecond))
	return res
}

// longestGap orders the outcomes by send time and returns the longest time from the first
// failure of a run of failures to the next success (or end, if none came).
func longestGap(outcomes []outcome, end time.Duration) time.Duration {
	slices.SortStableFunc(outcomes, func(a, b outcome) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	var longest time.Duration
	first := time.Duration(-1)
	for _, o := range outcomes {
		switch {
		case !o.ok && first < 0:
			first = o.at
		case o.ok && first >= 0:
			longest = max(longest, o.at-first)
			first = -1
		}
	}
	if first >= 0 {
		longest = max(longest, end-first)
	}
	return longest
}

// pace waits until next, or returns false at once if the run stopped.
func (r *run) pace(next time.Time) bool {
	d := time.Until(next)
	if d <= 0 {
		select {
		case <-r.stop:
			return false
		default:
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-r.stop:
		return false
	case <-t.C:
		return true
	}
}

// after returns when to start the request that follows one scheduled at next and started at
// start: one interval later on a fixed schedule, so that timer lateness does not lower the
// rate; but when a request ran over by an interval or more, the schedule restarts from start
// (no burst to catch up).
func (r *run) after(next, start time.Time) time.Time {
	interval := time.Duration(r.spec.Interval)
	if next = next.Add(interval); next.Before(start) {
		next = start.Add(interval)
	}
	return next
}

// parallel runs f(i) for i in [0, n) and waits for all of them.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i)
		}()
	}
	wg.Wait()
}

// stagger spreads the first requests of n workers over one interval.
func (r *run) stagger(i, n int) time.Time {
	return time.Now().Add(time.Duration(r.spec.Interval) * time.Duration(i) / time.Duration(n))
}

func (r *run) runHTTP() {
	timeout := time.Duration(r.spec.Timeout)
	tr := &http.Transport{
		// No Proxy: the target is reached directly whatever the environment says.
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: -1}).DialContext,
		DisableKeepAlives:     true, // a fresh connection, hence a new source port, per request
		ResponseHeaderTimeout: timeout,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	url := "http://" + r.spec.Target + r.spec.Path
	parallel(r.spec.Workers, func(i int) {
		next := r.stagger(i, r.spec.Workers)
		for r.pace(next) && r.begin() {
			start := time.Now()
			next = r.after(next, start)
			name, err := httpGet(client, url)
			if err != nil {
				r.failedWith(start, err)
			} else {
				r.succeeded(start, name)
			}
		}
	})
}

// httpGet returns the body of a 200 reply, trimmed: the name of the backend.
func httpGet(client *http.Client, url string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", "workload")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("http status %d", resp.StatusCode)
	}
	name := strings.TrimSpace(string(body))
	if name == "" {
		name = "(empty)"
	}
	return name, nil
}

func (r *run) runTCPStreams() {
	parallel(r.spec.Streams, r.tcpStream)
}

// errOutstanding is a stream the server closed while a request was waiting for its answer.
var errOutstanding = errors.New("stream closed by the server with a request outstanding")

// tcpStream keeps one long-lived connection and sends one line per interval on it.
func (r *run) tcpStream(i int) {
	timeout := time.Duration(r.spec.Timeout)
	var c net.Conn
	var lr *lineReader
	drop := func() {
		if c != nil {
			c.Close()
			c, lr = nil, nil
		}
	}
	defer drop()
	next := r.stagger(i, r.spec.Streams)
	for seq := 1; r.pace(next) && r.begin(); seq++ {
		start := time.Now()
		next = r.after(next, start)
		if c != nil {
			// Did the stream end while idle? A clean close then is no failure: reconnect.
			c.SetDeadline(time.Time{})
			st, err := peekConn(c)
			switch {
			case st == peekEOF && !lr.buffered():
				r.reconnected()
				drop()
			case st == peekErr:
				r.failedWith(start, fmt.Errorf("stream broke while idle: %w", err))
				drop()
				continue
			case st == peekData || lr.buffered():
				r.failedWith(start, errors.New("stream: unsolicited data from the server"))
				drop()
				continue
			}
		}
		if c == nil {
			d := net.Dialer{Timeout: timeout, KeepAlive: -1}
			nc, err := d.Dial("tcp", r.spec.Target)
			if err != nil {
				r.failedWith(start, err)
				continue
			}
			c, lr = nc, newLineReader(nc)
		}
		c.SetDeadline(start.Add(timeout))
		payload := strconv.Itoa(i) + "-" + strconv.Itoa(seq)
		if _, err := c.Write([]byte(payload + "\n")); err != nil {
			r.failedWith(start, err)
			drop()
			continue
		}
		line, err := lr.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errOutstanding
			}
			r.failedWith(start, err)
			drop() // a late answer would be taken for the next request's
			continue
		}
		name, got := splitReply(line)
		if got != payload {
			r.failedWith(start, fmt.Errorf("stream: reply %q to %q", line, payload))
			drop()
			continue
		}
		r.succeeded(start, name)
	}
}

// splitReply cuts "NAME PAYLOAD" at its last space.
func splitReply(s string) (name, payload string) {
	i := strings.LastIndexByte(s, ' ')
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i+1:]
}

// runUDP sends from one connected socket, which is the point: a connected UDP socket keeps
// its 5-tuple, so it shows whether the proxy moves it off a deleted backend. A socket the
// kernel aborted (ECONNABORTED: a proxy destroyed it, as svcproxy's eBPF backend does when
// its backend goes away; the socket is then disconnected, so a write fails with
// EDESTADDRREQ) is replaced by a new connected socket, as a DNS client does; that counts as
// a reconnect and the datagrams outstanding on it as failed.
func (r *run) runUDP() {
	timeout := time.Duration(r.spec.Timeout)
	raddr, err := net.ResolveUDPAddr("udp", r.spec.Target)
	if err != nil {
		r.setError(err)
		return
	}
	c, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		r.setError(err)
		return
	}

	type sent struct {
		seq   uint64
		start time.Time
	}
	var mu sync.Mutex
	pending := map[uint64]time.Time{} // sent and not answered yet
	var queue []sent                  // the same, oldest first (entries answered since stay until expire)
	aborted := false                  // the current socket was aborted: replace it
	failAll := func(err error) {
		for seq, start := range pending {
			delete(pending, seq)
			r.failedWith(start, err)
		}
		queue = queue[:0]
	}
	expire := func(now time.Time) {
		for len(queue) > 0 && now.Sub(queue[0].start) >= timeout {
			q := queue[0]
			queue = queue[1:]
			if _, ok := pending[q.seq]; ok {
				delete(pending, q.seq)
				r.failedWith(q.start, fmt.Errorf("udp: no reply within %v: %w", timeout, os.ErrDeadlineExceeded))
			}
		}
	}

	var readers sync.WaitGroup
	read := func(c *net.UDPConn) {
		defer readers.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// An ICMP error (port or host unreachable) answers one of the datagrams
				// outstanding; which one cannot be told, and the others went the same way.
				mu.Lock()
				failAll(err)
				if socketAborted(err) {
					aborted = true
					mu.Unlock()
					return
				}
				mu.Unlock()
				time.Sleep(time.Millisecond) // in case the error repeats without blocking
				continue
			}
			name, payload := splitReply(string(buf[:n]))
			seq, err := strconv.ParseUint(payload, 10, 64)
			if err != nil {
				continue
			}
			mu.Lock()
			start, ok := pending[seq]
			delete(pending, seq)
			mu.Unlock()
			if ok { // else a late answer, already counted as a timeout
				r.succeeded(start, name)
			}
		}
	}
	readers.Add(1)
	go read(c)

	next := time.Now()
	var seq uint64
	for r.pace(next) {
		mu.Lock()
		expire(time.Now())
		redial := aborted
		aborted = false
		mu.Unlock()
		if redial {
			c.Close()
			nc, err := net.DialUDP("udp", nil, raddr)
			if err != nil {
				r.setError(fmt.Errorf("udp: replacing the aborted socket: %w", err))
				break
			}
			c = nc
			r.reconnected()
			readers.Add(1)
			go read(c)
		}
		if !r.begin() {
			break
		}
		seq++
		start := time.Now()
		next = r.after(next, start)
		mu.Lock()
		pending[seq] = start
		queue = append(queue, sent{seq, start})
		mu.Unlock()
		if _, err := c.Write(strconv.AppendUint(nil, seq, 10)); err != nil {
			// A pending ICMP error surfaces here as well (and this datagram is not sent).
			mu.Lock()
			failAll(err)
			if socketAborted(err) {
				aborted = true
			}
			mu.Unlock()
		}
	}
	// Wait for the answers still due.
	for {
		mu.Lock()
		expire(time.Now())
		left := len(pending)
		mu.Unlock()
		if left == 0 {
			break
		}
		time.Sleep(min(time.Duration(r.spec.Interval), 5*time.Millisecond))
	}
	c.Close()
	readers.Wait()
}

// socketAborted tells whether err means the kernel aborted the socket (bpf_sock_destroy or
// ss -K): it is disconnected and must be replaced.
func socketAborted(err error) bool {
	return errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EDESTADDRREQ)
}

// classify sorts a failure into refused, timeout, reset, unreachable or other.
func classify(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		return "unreachable"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errOutstanding):
		return "reset"
	case isTimeout(err):
		return "timeout"
	}
	// Some errors lose their cause on the way up (net/http wraps a few with %v).
	msg := err.Error()
	switch {
	case strings.Contains(msg, "connection refused"):
		return "refused"
	case strings.Contains(msg, "no route to host"), strings.Contains(msg, "network is unreachable"):
		return "unreachable"
	case strings.Contains(msg, "connection reset"), strings.Contains(msg, "broken pipe"):
		return "reset"
	case strings.Contains(msg, "timeout"), strings.Contains(msg, "deadline exceeded"):
		return "timeout"
	}
	return "other"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT)
}
