// Command podserver is the tiny workload of the netns test harness. It has two roles:
//
//	podserver serve --name NAME [--tcp ADDR]... [--udp ADDR]... [--http ADDR]...
//	podserver probe --proto tcp|udp|http --addr IP:PORT --count N [--timeout D] [--parallel P]
//	podserver get URL
//
// serve answers every TCP connection with one line "NAME PEER\n" (PEER is the client address the
// server saw, so tests can tell whether a connection was masqueraded) and closes it; every UDP
// datagram with one datagram holding the same line; every HTTP GET with the same line as body.
// It prints "ready" on stdout once every listener is open and exits on SIGTERM or SIGINT.
//
// probe opens COUNT fresh connections (a new socket, hence a new source port, for each) to
// ADDR from wherever it runs (the harness starts it with `ip netns exec`), and prints one JSON
// object: replies per server name, peers as seen by the servers, and failures sorted into
// refused (RST or ICMP port unreachable), rejected (EPERM: the local firewall refused to send,
// as a REJECT or DROP rule in OUTPUT does to the sender), unreachable (ICMP host/net
// unreachable), timeout and other errors. It exits 0 whenever it could run the probes, whatever they returned.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: podserver serve|probe [flags]")
		os.Exit(1)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "probe":
		err = probe(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (want serve or probe)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "", "name to answer with")
	var tcps, udps, https listFlag
	fs.Var(&tcps, "tcp", "TCP listen address (repeatable)")
	fs.Var(&udps, "udp", "UDP listen address (repeatable)")
	fs.Var(&https, "http", "HTTP listen address (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return errors.New("serve: --name is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pod", *name)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	for _, a := range tcps {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("serve: listen tcp %s: %w", a, err)
		}
		closers = append(closers, ln)
		go serveTCP(ln, *name, log)
	}
	for _, a := range udps {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return fmt.Errorf("serve: listen udp %s: %w", a, err)
		}
		closers = append(closers, pc)
		go serveUDP(pc, *name, log)
	}
	for _, a := range https {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("serve: listen http %s: %w", a, err)
		}
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%s %s\n", *name, r.RemoteAddr)
			}),
			ReadHeaderTimeout: 5 * time.Second,
		}
		closers = append(closers, srv)
		go srv.Serve(ln)
	}
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}

func serveTCP(ln net.Listener, name string, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("accept failed", "addr", ln.Addr(), "err", err)
			}
			return
		}
		go func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
		}()
	}
}

func serveUDP(pc net.PacketConn, name string, log *slog.Logger) {
	buf := make([]byte, 2048)
	for {
		_, peer, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error("udp read failed", "addr", pc.LocalAddr(), "err", err)
			}
			return
		}
		if _, err := pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, peer), peer); err != nil {
			log.Error("udp reply failed", "peer", peer, "err", err)
		}
	}
}

func get(args []string) error {
	if len(args) != 1 {
		return errors.New("get: want exactly one URL")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(args[0])
	if err != nil {
		return fmt.Errorf("get %s: %w", args[0], err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("get %s: %w", args[0], err)
	}
	fmt.Println(resp.StatusCode)
	os.Stdout.Write(body)
	return nil
}

// Result is what probe prints. The harness decodes the same shape.
type Result struct {
	Replies     map[string]int    `json:"replies"`
	Peers       map[string]int    `json:"peers"`
	Refused     int               `json:"refused"`
	Rejected    int               `json:"rejected"`
	Unreachable int               `json:"unreachable"`
	Timeout     int               `json:"timeout"`
	Errors      map[string]int    `json:"errors"`
	Skipped     int               `json:"skipped"`
	Sequence    []string          `json:"sequence"`
	Extra       map[string]string `json:"extra,omitempty"`
}

func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	proto := fs.String("proto", "tcp", "tcp, udp or http")
	addr := fs.String("addr", "", "IP:PORT to connect to")
	count := fs.Int("count", 1, "number of fresh connections")
	timeout := fs.Duration("timeout", 2*time.Second, "per-connection timeout")
	parallel := fs.Int("parallel", 4, "connections in flight at once")
	source := fs.String("source", "", "local IP to bind (optional)")
	path := fs.String("path", "/", "HTTP path to GET (--proto http)")
	maxFail := fs.Int("max-failures", 0, "start no new connection after this many failed (0: no limit)")
	sourcePort := fs.Int("source-port", 0, "local port to bind (UDP only; every datagram then has the same 5-tuple)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *count < 1 || *parallel < 1 {
		return errors.New("probe: --addr, --count >= 1 and --parallel >= 1 are required")
	}
	if *proto != "tcp" && *proto != "udp" && *proto != "http" {
		return fmt.Errorf("probe: --proto %q: want tcp, udp or http", *proto)
	}
	if *sourcePort != 0 && (*proto != "udp" || *parallel != 1) {
		return errors.New("probe: --source-port needs --proto udp and --parallel 1")
	}
	res := Result{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}
	seq := make([]string, *count)
	var mu sync.Mutex
	var wg sync.WaitGroup
	failed := 0
	jobs := make(chan int)
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				mu.Lock()
				skip := *maxFail > 0 && failed >= *maxFail
				if skip {
					res.Skipped++
				}
				mu.Unlock()
				if skip {
					continue
				}
				line, err := once(*proto, *addr, *path, *source, *sourcePort, *timeout)
				mu.Lock()
				seq[i] = record(&res, line, err)
				if err != nil {
					failed++
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *count; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	for _, o := range seq {
		if o != "" {
			res.Sequence = append(res.Sequence, o)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// record files one outcome into res and returns its short label for the sequence.
func record(res *Result, line string, err error) string {
	switch {
	case err == nil:
		name, peer, _ := strings.Cut(strings.TrimSpace(line), " ")
		res.Replies[name]++
		if host, _, herr := net.SplitHostPort(peer); herr == nil {
			res.Peers[host]++
		}
		return name
	case errors.Is(err, syscall.ECONNREFUSED):
		res.Refused++
		return "!refused"
	case errors.Is(err, syscall.EPERM):
		// A packet the local firewall rejects or drops in OUTPUT fails its send at once.
		res.Rejected++
		return "!rejected"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		res.Unreachable++
		return "!unreachable"
	case isTimeout(err):
		res.Timeout++
		return "!timeout"
	default:
		res.Errors[err.Error()]++
		return "!error"
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT)
}

// once makes one connection and returns the server's line.
func once(proto, addr, path, source string, sourcePort int, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	switch proto {
	case "tcp", "http":
		if source != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		if proto == "http" {
			if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
				return "", err
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				return "", err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				return "", err
			}
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("http status %d", resp.StatusCode)
			}
			if len(body) == 0 {
				body = []byte("(empty)")
			}
			return string(body), nil
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("read reply: %w", err)
		}
		return line, nil
	default: // udp
		if source != "" || sourcePort != 0 {
			d.LocalAddr = &net.UDPAddr{IP: net.ParseIP(source), Port: sourcePort}
		}
		c, err := d.Dial("udp", addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return "", err
		}
		buf := make([]byte, 2048)
		n, err := c.Read(buf) // ICMP port unreachable surfaces here as ECONNREFUSED
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}
