package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxLine bounds one line of the TCP stream protocol.
const maxLine = 64 << 10

var errLineTooLong = errors.New("line too long")

// serveCmd runs `workload serve` until the first signal on sigs, then shuts down gracefully.
// started, if set, is called once every listener is open (tests use it to learn the ports).
func serveCmd(args []string, sigs <-chan os.Signal, started func(*server)) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", defaultName(), "name to answer with (default $POD_NAME, else the hostname)")
	httpAddr := fs.String("http", ":8080", "HTTP listen address (empty: none)")
	tcpAddr := fs.String("tcp", ":9090", "TCP line-stream listen address (empty: none)")
	udpAddr := fs.String("udp", ":9091", "UDP listen address (empty: none)")
	drain := fs.Duration("drain", 0, "after SIGTERM, keep serving this long (with /healthz failing) before closing")
	grace := fs.Duration("shutdown-timeout", 30*time.Second, "after the drain, how long to wait for in-flight requests and streams")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("serve: unexpected arguments %q", fs.Args())
	}
	if *name == "" {
		return errors.New("serve: --name is empty and neither $POD_NAME nor the hostname is set")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pod", *name)
	s, err := listen(*name, *httpAddr, *tcpAddr, *udpAddr, log)
	if err != nil {
		return err
	}
	s.start()
	h, t, u := s.addrs()
	log.Info("serving", "http", h, "tcp", t, "udp", u)
	if started != nil {
		started(s)
	}

	sig := <-sigs
	s.beginDrain()
	log.Info("draining: /healthz fails from now on", "signal", sig, "drain", *drain)
	if *drain > 0 {
		t := time.NewTimer(*drain)
		select {
		case <-t.C:
		case sig := <-sigs:
			t.Stop()
			log.Info("second signal: ending the drain early", "signal", sig)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *grace)
	defer cancel()
	if err := s.shutdown(ctx); err != nil {
		// Still exit 0: the pod is going away whatever happens; the log says what was cut short.
		log.Warn("shutdown cut short", "err", err)
	}
	log.Info("stopped")
	return nil
}

func defaultName() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return h
}

// addrs returns the listening addresses ("" for a protocol not served).
func (s *server) addrs() (httpAddr, tcpAddr, udpAddr string) {
	if s.httpLn != nil {
		httpAddr = s.httpLn.Addr().String()
	}
	if s.tcpLn != nil {
		tcpAddr = s.tcpLn.Addr().String()
	}
	if s.udp != nil {
		udpAddr = s.udp.LocalAddr().String()
	}
	return httpAddr, tcpAddr, udpAddr
}

// server is the backend of `workload serve`.
type server struct {
	name     string
	log      *slog.Logger
	draining atomic.Bool

	httpLn  net.Listener
	httpSrv *http.Server
	tcpLn   net.Listener
	udp     net.PacketConn

	mu       sync.Mutex
	stopping bool // the TCP streams must end after their current line
	streams  map[net.Conn]struct{}
	wg       sync.WaitGroup // the TCP accept loop, the UDP loop and every TCP stream
	httpDone chan struct{}
}

// listen opens every listener whose address is not empty.
func listen(name, httpAddr, tcpAddr, udpAddr string, log *slog.Logger) (*server, error) {
	s := &server{name: name, log: log, streams: map[net.Conn]struct{}{}, httpDone: make(chan struct{})}
	fail := func(err error) (*server, error) {
		if s.httpLn != nil {
			s.httpLn.Close()
		}
		if s.tcpLn != nil {
			s.tcpLn.Close()
		}
		return nil, err
	}
	var err error
	if httpAddr != "" {
		if s.httpLn, err = net.Listen("tcp", httpAddr); err != nil {
			return fail(fmt.Errorf("serve: listen http %s: %w", httpAddr, err))
		}
	}
	if tcpAddr != "" {
		if s.tcpLn, err = net.Listen("tcp", tcpAddr); err != nil {
			return fail(fmt.Errorf("serve: listen tcp %s: %w", tcpAddr, err))
		}
	}
	if udpAddr != "" {
		if s.udp, err = net.ListenPacket("udp", udpAddr); err != nil {
			return fail(fmt.Errorf("serve: listen udp %s: %w", udpAddr, err))
		}
	}
	return s, nil
}

func (s *server) start() {
	if s.httpLn != nil {
		s.httpSrv = &http.Server{
			Handler:           http.HandlerFunc(s.serveHTTP),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
		}
		go func() {
			defer close(s.httpDone)
			if err := s.httpSrv.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("http serve failed", "err", err)
			}
		}()
	} else {
		close(s.httpDone)
	}
	if s.tcpLn != nil {
		s.wg.Add(1)
		go s.acceptStreams()
	}
	if s.udp != nil {
		s.wg.Add(1)
		go s.serveUDP()
	}
}

func (s *server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	draining := s.draining.Load()
	if draining {
		// Ask keep-alive clients to come back through the Service, to a backend that stays.
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.URL.Path == "/healthz" && draining {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "draining")
		return
	}
	fmt.Fprintln(w, s.name)
}

// beginDrain makes /healthz fail; everything else goes on as before.
func (s *server) beginDrain() { s.draining.Store(true) }

// shutdown stops accepting, lets in-flight HTTP requests finish, ends every TCP stream after
// the line it is answering and waits for all of it until ctx expires (then it cuts the rest).
func (s *server) shutdown(ctx context.Context) error {
	s.beginDrain()
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.udp != nil {
		s.udp.Close()
	}
	httpErr := make(chan error, 1)
	go func() {
		if s.httpSrv == nil {
			httpErr <- nil
			return
		}
		err := s.httpSrv.Shutdown(ctx)
		<-s.httpDone
		httpErr <- err
	}()

	s.mu.Lock()
	s.stopping = true
	for c := range s.streams {
		c.SetReadDeadline(time.Now()) // wakes the reader; handleStream sees stopping
	}
	s.mu.Unlock()

	streamsDone := make(chan struct{})
	go func() { s.wg.Wait(); close(streamsDone) }()
	var err error
	select {
	case <-streamsDone:
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.streams)
		for c := range s.streams {
			c.Close()
		}
		s.mu.Unlock()
		<-streamsDone
		err = fmt.Errorf("%d TCP streams closed by force: %w", n, ctx.Err())
	}
	return errors.Join(err, <-httpErr)
}

func (s *server) acceptStreams() {
	defer s.wg.Done()
	for {
		c, err := s.tcpLn.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Error("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.stopping {
			// Accepted just as the shutdown began: treat it like the others, which answers
			// a line the client may have sent already, then closes.
			c.SetReadDeadline(time.Now())
		}
		s.streams[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handleStream(c)
	}
}

func (s *server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// handleStream answers each line with "NAME <line>\n" until the client closes or the server
// shuts down; it never closes a stream first otherwise.
func (s *server) handleStream(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.streams, c)
		s.mu.Unlock()
		c.Close()
	}()
	lr := newLineReader(c)
	for {
		line, err := lr.readLine()
		if err != nil {
			if isTimeout(err) && s.isStopping() {
				s.finishPending(c, lr)
			}
			return
		}
		if err := s.answer(c, line); err != nil {
			return
		}
		if s.isStopping() {
			s.finishPending(c, lr)
			return
		}
	}
}

// finishPending answers the lines that already reached the socket, so that closing it sends a
// FIN, not a reset, and no request that arrived before the shutdown goes unanswered.
func (s *server) finishPending(c net.Conn, lr *lineReader) {
	for {
		if !lr.hasLine() {
			c.SetReadDeadline(time.Time{})
			if st, _ := peekConn(c); st != peekData {
				return
			}
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		}
		line, err := lr.readLine()
		if err != nil {
			return
		}
		if err := s.answer(c, line); err != nil {
			return
		}
	}
}

func (s *server) answer(c net.Conn, line string) error {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Write([]byte(s.name + " " + line + "\n"))
	return err
}

func (s *server) serveUDP() {
	defer s.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, peer, err := s.udp.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Error("udp read failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		reply := append([]byte(s.name+" "), buf[:n]...)
		if _, err := s.udp.WriteTo(reply, peer); err != nil {
			s.log.Warn("udp reply failed", "peer", peer, "err", err)
		}
	}
}

// lineReader reads '\n'-terminated lines from a connection and keeps what follows the last
// line for the next call (unlike bufio, a read error loses nothing).
type lineReader struct {
	c   net.Conn
	buf []byte
	tmp []byte
}

func newLineReader(c net.Conn) *lineReader { return &lineReader{c: c, tmp: make([]byte, 4096)} }

func (l *lineReader) hasLine() bool { return bytes.IndexByte(l.buf, '\n') >= 0 }

// buffered reports whether bytes were received and not returned yet.
func (l *lineReader) buffered() bool { return len(l.buf) > 0 }

func (l *lineReader) readLine() (string, error) {
	for {
		if i := bytes.IndexByte(l.buf, '\n'); i >= 0 {
			line := strings.TrimSuffix(string(l.buf[:i]), "\r")
			l.buf = l.buf[:copy(l.buf, l.buf[i+1:])]
			return line, nil
		}
		if len(l.buf) >= maxLine {
			return "", errLineTooLong
		}
		n, err := l.c.Read(l.tmp)
		l.buf = append(l.buf, l.tmp[:n]...)
		if err != nil && !l.hasLine() {
			return "", err
		}
	}
}

type peekState int

const (
	peekIdle peekState = iota // open, nothing to read
	peekData                  // bytes are waiting
	peekEOF                   // the peer closed its side cleanly (FIN) and nothing is left to read
	peekErr                   // the connection is broken (reset...): see the error
)

// peekConn looks at a TCP connection without waiting and without consuming anything: the only
// way to tell a stream the peer closed while idle from one still open, before writing to it.
// The connection must have no expired read deadline.
func peekConn(c net.Conn) (peekState, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return peekIdle, nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return peekErr, err
	}
	var n int
	var rerr error
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	})
	switch {
	case err != nil:
		return peekErr, err
	case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK || rerr == syscall.EINTR:
		return peekIdle, nil
	case rerr != nil:
		return peekErr, os.NewSyscallError("recvfrom", rerr)
	case n == 0:
		return peekEOF, nil
	default:
		return peekData, nil
	}
}
