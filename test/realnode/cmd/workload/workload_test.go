package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Every test talks to 127.0.0.1 only.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startServer starts a backend; an address "" disables that protocol. The server is shut down
// at the end of the test unless the test did it.
func startServer(t *testing.T, name, httpAddr, tcpAddr, udpAddr string) *server {
	t.Helper()
	var s *server
	var err error
	// Rebinding the port of a server just stopped: retry a little in case the port is briefly
	// held (a client socket of another test may have taken it as its source port).
	for range 50 {
		if s, err = listen(name, httpAddr, tcpAddr, udpAddr, quiet); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(func() { stopServer(t, s) })
	return s
}

func stopServer(t *testing.T, s *server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func load(t *testing.T, spec Spec) Result {
	t.Helper()
	r := start(t, spec)
	r.execute()
	return finalResult(t, r)
}

func start(t *testing.T, spec Spec) *run {
	t.Helper()
	if err := spec.normalize(); err != nil {
		t.Fatal(err)
	}
	return newRun("test", spec)
}

func finalResult(t *testing.T, r *run) Result {
	t.Helper()
	<-r.done
	res := r.snapshot()
	if !res.Done || res.Error != "" {
		t.Fatalf("run not done cleanly: %+v", res)
	}
	if res.Sent != res.OK+res.Failed || res.InFlight != 0 {
		t.Errorf("sent %d != ok %d + failed %d (inFlight %d)", res.Sent, res.OK, res.Failed, res.InFlight)
	}
	f := res.Failures
	if sum := f.Refused + f.Timeout + f.Reset + f.Unreachable + f.Other; sum != res.Failed {
		t.Errorf("failures %+v add up to %d, failed is %d", f, sum, res.Failed)
	}
	if want := min(res.Failed, maxErrorSamples); len(res.Errors) != want {
		t.Errorf("%d error samples, want %d", len(res.Errors), want)
	}
	b, _ := json.Marshal(res)
	t.Logf("result: %s", b)
	return res
}

func ms(n int) Duration { return Duration(time.Duration(n) * time.Millisecond) }

func TestLoadAllKinds(t *testing.T) {
	s := startServer(t, "pod-a", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	h, tc, u := s.addrs()
	for _, tt := range []struct{ kind, target string }{
		{kindHTTP, h}, {kindTCPStream, tc}, {kindUDP, u},
	} {
		t.Run(tt.kind, func(t *testing.T) {
			res := load(t, Spec{Target: tt.target, Kind: tt.kind, Duration: ms(300), Workers: 4, Streams: 4, Interval: ms(5), Timeout: ms(1000)})
			if res.OK < 20 || res.Failed != 0 || res.Backends["pod-a"] != res.OK || len(res.Backends) != 1 {
				t.Errorf("want only successes from pod-a, got %+v", res)
			}
			if res.Reconnects != 0 || res.LongestGap != 0 {
				t.Errorf("reconnects %d, longestGap %v: want 0", res.Reconnects, res.LongestGap)
			}
			if len(res.FirstSeen) != 1 || res.FirstSeen[0].Name != "pod-a" {
				t.Errorf("firstSeen %+v", res.FirstSeen)
			}
			if d := time.Duration(res.Duration); d < 300*time.Millisecond || d > 2*time.Second {
				t.Errorf("duration %v", d)
			}
		})
	}
}

func TestMaxRequestsAndConcurrencyCap(t *testing.T) {
	s := startServer(t, "pod-a", "127.0.0.1:0", "", "")
	h, _, _ := s.addrs()
	spec := Spec{Target: h, Kind: kindHTTP, Duration: Duration(10 * time.Second), Workers: 500, MaxRequests: 37, Interval: ms(1)}
	res := load(t, spec)
	if res.Sent != 37 || res.OK != 37 {
		t.Errorf("sent %d ok %d, want 37", res.Sent, res.OK)
	}
	if res.Spec.Workers != maxParallel {
		t.Errorf("workers %d, want capped at %d", res.Spec.Workers, maxParallel)
	}
	if time.Duration(res.Duration) > 5*time.Second {
		t.Errorf("maxRequests did not end the run early: %v", time.Duration(res.Duration))
	}
}

// TestHTTPServerStopsMidRun stops the backend, then starts another on the same port.
func TestHTTPServerStopsMidRun(t *testing.T) {
	a := startServer(t, "pod-a", "127.0.0.1:0", "", "")
	addr, _, _ := a.addrs()
	r := start(t, Spec{Target: addr, Kind: kindHTTP, Duration: ms(1200), Workers: 4, Interval: ms(5), Timeout: ms(500)})
	go r.execute()
	time.Sleep(300 * time.Millisecond)
	stopServer(t, a)
	time.Sleep(300 * time.Millisecond)
	startServer(t, "pod-b", addr, "", "")
	res := finalResult(t, r)
	if res.Backends["pod-a"] == 0 || res.Backends["pod-b"] == 0 {
		t.Errorf("backends %v: want both", res.Backends)
	}
	if res.Failures.Refused == 0 || res.Failures.Timeout != 0 || res.Failures.Other != 0 || res.Failures.Unreachable != 0 {
		t.Errorf("failures %+v: want refused (and at most a few resets)", res.Failures)
	}
	if len(res.FirstSeen) != 2 || res.FirstSeen[0].Name != "pod-a" || res.FirstSeen[1].Name != "pod-b" {
		t.Errorf("firstSeen %+v", res.FirstSeen)
	}
	if g := time.Duration(res.LongestGap); g < 150*time.Millisecond || g > 900*time.Millisecond {
		t.Errorf("longestGap %v, want about 300ms", g)
	}
	if res.Errors[0].Err == "" || time.Duration(res.Errors[0].At) < 250*time.Millisecond {
		t.Errorf("first error %+v: want one after the stop", res.Errors[0])
	}
}

// TestTCPStreamServerStopsMidRun: a graceful stop closes every stream between two requests,
// which is a reconnect, not a failure; the redials then fail (refused) until the next server.
func TestTCPStreamServerStopsMidRun(t *testing.T) {
	const streams = 4
	a := startServer(t, "pod-a", "", "127.0.0.1:0", "")
	_, addr, _ := a.addrs()
	r := start(t, Spec{Target: addr, Kind: kindTCPStream, Duration: ms(1200), Streams: streams, Interval: ms(10), Timeout: ms(500)})
	go r.execute()
	time.Sleep(300 * time.Millisecond)
	stopServer(t, a)
	time.Sleep(300 * time.Millisecond)
	startServer(t, "pod-b", "", addr, "")
	res := finalResult(t, r)
	if res.Backends["pod-a"] == 0 || res.Backends["pod-b"] == 0 {
		t.Errorf("backends %v: want both", res.Backends)
	}
	// Each stream ended once: cleanly (a reconnect) unless its request crossed the close, which
	// is a genuine failure (reset) but rare, since the client is idle nearly all the time.
	if res.Reconnects+res.Failures.Reset != streams || res.Reconnects < streams-1 {
		t.Errorf("reconnects %d + resets %d: want %d, nearly all reconnects", res.Reconnects, res.Failures.Reset, streams)
	}
	if res.Failures.Refused == 0 || res.Failures.Timeout != 0 || res.Failures.Other != 0 {
		t.Errorf("failures %+v: want the redials refused", res.Failures)
	}
	if g := time.Duration(res.LongestGap); g < 150*time.Millisecond || g > 900*time.Millisecond {
		t.Errorf("longestGap %v, want about 300ms", g)
	}
}

// fakeStreamServer runs handle on every connection accepted on a loopback port.
func fakeStreamServer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPStreamCleanCloseBetweenRequestsIsReconnect(t *testing.T) {
	// Answers one line, then closes the stream (a FIN while the client is idle).
	addr := fakeStreamServer(t, func(c net.Conn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err == nil {
			io.WriteString(c, "once "+line)
		}
	})
	res := load(t, Spec{Target: addr, Kind: kindTCPStream, Duration: Duration(10 * time.Second), Streams: 1, Interval: ms(20), MaxRequests: 10})
	if res.OK != 10 || res.Failed != 0 || res.Reconnects != 9 || res.Backends["once"] != 10 {
		t.Errorf("want 10 ok, 9 reconnects: %+v", res)
	}
}

func TestTCPStreamCloseWithRequestOutstandingFails(t *testing.T) {
	// Reads the line and closes without answering: the client sees EOF while waiting.
	addr := fakeStreamServer(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
	})
	res := load(t, Spec{Target: addr, Kind: kindTCPStream, Duration: Duration(10 * time.Second), Streams: 2, Interval: ms(10), MaxRequests: 6})
	if res.OK != 0 || res.Failed != 6 || res.Failures.Reset != 6 || res.Reconnects != 0 {
		t.Errorf("want 6 reset failures, no reconnect: %+v", res)
	}
	if !strings.Contains(res.Errors[0].Err, errOutstanding.Error()) {
		t.Errorf("error %q", res.Errors[0].Err)
	}
}

func TestTCPStreamResetFails(t *testing.T) {
	// Reads the line, then resets the connection (SO_LINGER 0).
	addr := fakeStreamServer(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		c.(*net.TCPConn).SetLinger(0)
	})
	res := load(t, Spec{Target: addr, Kind: kindTCPStream, Duration: Duration(10 * time.Second), Streams: 1, Interval: ms(10), MaxRequests: 4})
	if res.Failed != 4 || res.Failures.Reset != 4 || res.Reconnects != 0 {
		t.Errorf("want 4 reset failures: %+v", res)
	}
}

func TestTCPStreamNoAnswerTimesOut(t *testing.T) {
	addr := fakeStreamServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	res := load(t, Spec{Target: addr, Kind: kindTCPStream, Duration: Duration(10 * time.Second), Streams: 1, Interval: ms(10), Timeout: ms(100), MaxRequests: 3})
	if res.Failed != 3 || res.Failures.Timeout != 3 {
		t.Errorf("want 3 timeouts: %+v", res)
	}
}

func TestTCPStreamRefused(t *testing.T) {
	addr := unusedPort(t, "tcp")
	res := load(t, Spec{Target: addr, Kind: kindTCPStream, Duration: Duration(10 * time.Second), Streams: 2, Interval: ms(5), MaxRequests: 6})
	if res.Failed != 6 || res.Failures.Refused != 6 {
		t.Errorf("want 6 refused: %+v", res)
	}
	if g := time.Duration(res.LongestGap); g <= 0 || g > time.Duration(res.Duration) {
		t.Errorf("longestGap %v with every request failed (duration %v)", g, time.Duration(res.Duration))
	}
}

// unusedPort returns a loopback address nothing listens on (briefly bound, then released).
func unusedPort(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestUDPGap: the backend of one connected socket goes away for about 500ms, then another
// takes its port; the socket stays the same and the gap is measured.
func TestUDPGap(t *testing.T) {
	a := startServer(t, "pod-a", "", "", "127.0.0.1:0")
	_, _, addr := a.addrs()
	r := start(t, Spec{Target: addr, Kind: kindUDP, Duration: ms(1500), Interval: ms(10), Timeout: ms(200)})
	go r.execute()
	time.Sleep(400 * time.Millisecond)
	stopServer(t, a)
	time.Sleep(500 * time.Millisecond)
	startServer(t, "pod-b", "", "", addr)
	res := finalResult(t, r)
	if res.Backends["pod-a"] == 0 || res.Backends["pod-b"] == 0 {
		t.Errorf("backends %v: want both", res.Backends)
	}
	if len(res.FirstSeen) != 2 || res.FirstSeen[0].Name != "pod-a" || res.FirstSeen[1].Name != "pod-b" ||
		time.Duration(res.FirstSeen[1].At) < 850*time.Millisecond {
		t.Errorf("firstSeen %+v: want pod-a, then pod-b after about 900ms", res.FirstSeen)
	}
	if res.Failed == 0 || res.Failures.Refused == 0 || res.Failures.Refused+res.Failures.Timeout != res.Failed {
		t.Errorf("failures %+v: want refused (ICMP port unreachable) and at most timeouts", res.Failures)
	}
	if g := time.Duration(res.LongestGap); g < 400*time.Millisecond || g > 800*time.Millisecond {
		t.Errorf("longestGap %v, want about 500ms", g)
	}
}

func TestUDPNoAnswerTimesOut(t *testing.T) {
	// A socket that reads and never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go io.Copy(io.Discard, readerOf(pc))
	res := load(t, Spec{Target: pc.LocalAddr().String(), Kind: kindUDP, Duration: Duration(10 * time.Second), Interval: ms(10), Timeout: ms(100), MaxRequests: 5})
	if res.Failed != 5 || res.Failures.Timeout != 5 {
		t.Errorf("want 5 timeouts: %+v", res)
	}
	if g := time.Duration(res.LongestGap); g < 100*time.Millisecond {
		t.Errorf("longestGap %v: want the whole run", g)
	}
}

type pcReader struct{ pc net.PacketConn }

func (r pcReader) Read(b []byte) (int, error) { n, _, err := r.pc.ReadFrom(b); return n, err }

func readerOf(pc net.PacketConn) io.Reader { return pcReader{pc} }

func TestLongestGap(t *testing.T) {
	o := func(at int, ok bool) outcome { return outcome{at: time.Duration(at) * time.Millisecond, ok: ok} }
	for _, tt := range []struct {
		name string
		in   []outcome
		end  int
		want int
	}{
		{"none", nil, 100, 0},
		{"all ok", []outcome{o(0, true), o(10, true)}, 100, 0},
		{"middle", []outcome{o(0, true), o(10, false), o(20, false), o(30, true), o(40, false), o(45, true)}, 100, 20},
		{"unordered", []outcome{o(30, true), o(20, false), o(0, true), o(10, false)}, 100, 20},
		{"till the end", []outcome{o(0, true), o(10, false), o(50, true), o(60, false)}, 200, 140},
	} {
		if got := longestGap(tt.in, time.Duration(tt.end)*time.Millisecond); got != time.Duration(tt.want)*time.Millisecond {
			t.Errorf("%s: %v, want %dms", tt.name, got, tt.want)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, "refused"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, "unreachable"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}, "unreachable"},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, "reset"},
		{&net.OpError{Op: "write", Err: os.NewSyscallError("write", syscall.EPIPE)}, "reset"},
		{errOutstanding, "reset"},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, "timeout"},
		{context.DeadlineExceeded, "timeout"},
		{errors.New("http status 503"), "other"},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EPERM)}, "other"},
	} {
		if got := classify(tt.err); got != tt.want {
			t.Errorf("classify(%v) = %s, want %s", tt.err, got, tt.want)
		}
	}
}

func TestSpecNormalize(t *testing.T) {
	s := Spec{Target: "10.96.0.10:80", Kind: kindHTTP}
	if err := s.normalize(); err != nil {
		t.Fatal(err)
	}
	want := Spec{Target: "10.96.0.10:80", Kind: kindHTTP, Duration: Duration(defaultDuration), Workers: 1, Streams: 1,
		Interval: Duration(defaultInterval), Timeout: Duration(defaultTimeout), MaxRequests: defaultMaxRequests, Path: "/"}
	if s != want {
		t.Errorf("defaults: %+v, want %+v", s, want)
	}
	for _, bad := range []Spec{
		{Target: "10.96.0.10:80", Kind: "sctp"},
		{Target: "10.96.0.10", Kind: kindUDP},
		{Target: "10.96.0.10:80", Kind: kindUDP, Timeout: -1},
		{Target: "10.96.0.10:80", Kind: kindUDP, Workers: -1},
		{Target: "10.96.0.10:80", Kind: kindHTTP, Path: "x"},
	} {
		if err := bad.normalize(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
	var d struct{ A, B Duration }
	if err := json.Unmarshal([]byte(`{"A":"20ms","B":2000000000}`), &d); err != nil || d.A != ms(20) || d.B != ms(2000) {
		t.Errorf("durations: %v %v %v", d.A, d.B, err)
	}
}

// TestServeGracefulShutdown drives `workload serve` itself: SIGTERM, drain, stop.
func TestServeGracefulShutdown(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	started := make(chan *server, 1)
	done := make(chan error, 1)
	go func() {
		done <- serveCmd([]string{"--name", "pod-a", "--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--drain", "400ms"},
			sigs, func(s *server) { started <- s })
	}()
	var s *server
	select {
	case s = <-started:
	case err := <-done:
		t.Fatal(err)
	}
	h, tc, _ := s.addrs()
	get := func(path string) (int, string, bool) {
		t.Helper()
		resp, err := http.Get("http://" + h + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Close // Connection: close
	}
	if code, body, closing := get("/healthz"); code != 200 || body != "pod-a\n" || closing {
		t.Errorf("healthz before SIGTERM: %d %q Connection: close %v", code, body, closing)
	}
	if code, body, _ := get("/any/path"); code != 200 || body != "pod-a\n" {
		t.Errorf("GET /any/path: %d %q", code, body)
	}

	// A stream opened before the signal, one line answered.
	old, err := net.Dial("tcp", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldR := bufio.NewReader(old)
	io.WriteString(old, "hello\n")
	old.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, err := oldR.ReadString('\n'); err != nil || line != "pod-a hello\n" {
		t.Fatalf("stream answer %q %v", line, err)
	}

	sigs <- syscall.SIGTERM
	time.Sleep(50 * time.Millisecond)
	// Draining: /healthz fails, the rest goes on, new streams included.
	if code, _, _ := get("/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("healthz while draining: %d", code)
	}
	if code, body, closing := get("/"); code != 200 || body != "pod-a\n" || !closing {
		t.Errorf("GET / while draining: %d %q Connection: close %v", code, body, closing)
	}
	newc, err := net.Dial("tcp", tc)
	if err != nil {
		t.Fatalf("new stream while draining: %v", err)
	}
	defer newc.Close()
	io.WriteString(newc, "x\n")
	newc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, err := bufio.NewReader(newc).ReadString('\n'); err != nil || line != "pod-a x\n" {
		t.Errorf("new stream answer %q %v", line, err)
	}
	io.WriteString(old, "still\n")
	if line, err := oldR.ReadString('\n'); err != nil || line != "pod-a still\n" {
		t.Errorf("old stream answer while draining %q %v", line, err)
	}

	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not stop")
	}
	// The old stream was closed cleanly: EOF, not a reset.
	old.SetReadDeadline(time.Now().Add(2 * time.Second))
	if b, err := oldR.ReadString('\n'); err != io.EOF {
		t.Errorf("old stream after shutdown: %q %v, want EOF", b, err)
	}
	if _, err := net.DialTimeout("tcp", tc, time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after shutdown: %v, want refused", err)
	}
}

// TestStreamShutdownAnswersPendingLine: a line that reached the socket before the shutdown is
// answered before the close.
func TestStreamShutdownAnswersPendingLine(t *testing.T) {
	s := startServer(t, "pod-a", "", "127.0.0.1:0", "")
	_, tc, _ := s.addrs()
	c, err := net.Dial("tcp", tc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	io.WriteString(c, "a\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, _ := r.ReadString('\n'); line != "pod-a a\n" {
		t.Fatalf("answer %q", line)
	}
	// Mark the server stopping without waking the stream yet, send a line, then shut down:
	// the line is in the socket, unread, when the deadline wakes the reader.
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	io.WriteString(c, "b\n")
	time.Sleep(50 * time.Millisecond)
	stopServer(t, s)
	var got []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF {
				t.Errorf("read: %v, want EOF after the answers", err)
			}
			break
		}
		got = append(got, line)
	}
	if len(got) != 1 || got[0] != "pod-a b\n" {
		t.Errorf("answers %q, want [pod-a b]", got)
	}
}

func TestControlAPI(t *testing.T) {
	s := startServer(t, "pod-a", "127.0.0.1:0", "", "")
	h, _, _ := s.addrs()
	api := httptest.NewServer(newController(quiet).handler())
	defer api.Close()

	resp, err := http.Get(api.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	post := func(body string) (int, map[string]string) {
		t.Helper()
		resp, err := http.Post(api.URL+"/run", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]string
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	getRun := func(path string) (int, Result) {
		t.Helper()
		resp, err := http.Get(api.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res Result
		json.NewDecoder(resp.Body).Decode(&res)
		return resp.StatusCode, res
	}

	if code, m := post(`{"target":"` + h + `","kind":"http","bogus":1}`); code != 400 || m["error"] == "" {
		t.Errorf("unknown field: %d %v", code, m)
	}
	if code, _ := post(`{"target":"` + h + `","kind":"quic"}`); code != 400 {
		t.Errorf("bad kind: %d", code)
	}
	code, m := post(`{"target":"` + h + `","kind":"http","duration":"600ms","workers":2,"interval":"10ms","timeout":"1s","maxRequests":100000}`)
	if code != 200 || m["id"] == "" {
		t.Fatalf("POST /run: %d %v", code, m)
	}
	id := m["id"]
	code2, m2 := post(`{"target":"` + h + `","kind":"http","duration":"200ms"}`)
	if code2 != 200 || m2["id"] == id {
		t.Fatalf("second run: %d %v", code2, m2)
	}

	time.Sleep(150 * time.Millisecond)
	code, res := getRun("/run/" + id)
	if code != http.StatusAccepted || res.Done || res.Sent == 0 {
		t.Errorf("while running: %d %+v", code, res)
	}
	code, res = getRun("/run/" + id + "?wait=10s")
	if code != 200 || !res.Done || res.OK == 0 || res.Failed != 0 || res.Backends["pod-a"] != res.OK || res.ID != id {
		t.Errorf("done: %d %+v", code, res)
	}
	if code, _ := getRun("/run/nope"); code != 404 {
		t.Errorf("unknown id: %d", code)
	}
	resp, err = http.Get(api.URL + "/run")
	if err != nil {
		t.Fatal(err)
	}
	var all []Result
	json.NewDecoder(resp.Body).Decode(&all)
	resp.Body.Close()
	if len(all) != 2 || all[0].ID != id {
		t.Errorf("list: %+v", all)
	}
}

func TestRunCmd(t *testing.T) {
	s := startServer(t, "pod-a", "", "", "127.0.0.1:0")
	_, _, u := s.addrs()
	var out bytes.Buffer
	if err := runCmd([]string{"--target", u, "--kind", "udp", "--interval", "5ms", "--max-requests", "7"}, &out); err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if !res.Done || res.OK != 7 || res.Backends["pod-a"] != 7 {
		t.Errorf("%+v", res)
	}
	if err := runCmd([]string{"--target", u}, io.Discard); err == nil {
		t.Error("no --kind: no error")
	}
}

func TestParseSeconds(t *testing.T) {
	for in, want := range map[string]time.Duration{"5": 5 * time.Second, "0.25": 250 * time.Millisecond, "1500ms": 1500 * time.Millisecond} {
		if got, err := parseSeconds(in); err != nil || got != want {
			t.Errorf("parseSeconds(%q) = %v %v", in, got, err)
		}
	}
	for _, bad := range []string{"-1", "x", "-2s"} {
		if _, err := parseSeconds(bad); err == nil {
			t.Errorf("parseSeconds(%q): no error", bad)
		}
	}
}
