package main

import (
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
	"strconv"
	"sync"
	"syscall"
	"time"
)

// maxRunning bounds the runs going at once in one client.
const maxRunning = 32

// clientCmd runs `workload client`: the control API, until SIGTERM or SIGINT.
func clientCmd(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	listenAddr := fs.String("listen", ":9000", "control API listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("client: unexpected arguments %q", fs.Args())
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ln, err := net.Listen("tcp", *listenAddr)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}
	srv := &http.Server{Handler: newController(log).handler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("control API listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("client: %w", err)
	}
	return nil
}

// controller is the control API of `workload client`.
type controller struct {
	log  *slog.Logger
	mu   sync.Mutex
	runs map[string]*run
	ids  []string // in order of creation
}

func newController(log *slog.Logger) *controller {
	return &controller{log: log, runs: map[string]*run{}}
}

func (c *controller) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("POST /run", c.start)
	mux.HandleFunc("GET /run", c.list)
	mux.HandleFunc("GET /run/{id}", c.get)
	return mux
}

func (c *controller) start(w http.ResponseWriter, req *http.Request) {
	var spec Spec
	dec := json.NewDecoder(io.LimitReader(req.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad spec: " + err.Error()})
		return
	}
	if err := spec.normalize(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad spec: " + err.Error()})
		return
	}
	c.mu.Lock()
	running := 0
	for _, r := range c.runs {
		select {
		case <-r.done:
		default:
			running++
		}
	}
	if running >= maxRunning {
		c.mu.Unlock()
		writeJSON(w, http.StatusTooManyRequests, map[string]string{"error": fmt.Sprintf("%d runs going already", running)})
		return
	}
	id := "run-" + strconv.Itoa(len(c.ids)+1)
	r := newRun(id, spec)
	c.runs[id] = r
	c.ids = append(c.ids, id)
	c.mu.Unlock()

	c.log.Info("run started", "id", id, "kind", spec.Kind, "target", spec.Target, "duration", time.Duration(spec.Duration))
	go func() {
		r.execute()
		res := r.snapshot()
		c.log.Info("run done", "id", id, "sent", res.Sent, "ok", res.OK, "failed", res.Failed,
			"reconnects", res.Reconnects, "longestGap", time.Duration(res.LongestGap), "error", res.Error)
	}()
	writeJSON(w, http.StatusOK, map[string]string{"id": id})
}

func (c *controller) get(w http.ResponseWriter, req *http.Request) {
	c.mu.Lock()
	r := c.runs[req.PathValue("id")]
	c.mu.Unlock()
	if r == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such run"})
		return
	}
	if s := req.URL.Query().Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "wait: want a duration such as 30s"})
			return
		}
		t := time.NewTimer(d)
		select {
		case <-r.done:
		case <-t.C:
		case <-req.Context().Done():
		}
		t.Stop()
	}
	res := r.snapshot()
	code := http.StatusOK
	if !res.Done {
		code = http.StatusAccepted
	}
	writeJSON(w, code, res)
}

func (c *controller) list(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	runs := make([]*run, 0, len(c.ids))
	for _, id := range c.ids {
		runs = append(runs, c.runs[id])
	}
	c.mu.Unlock()
	out := make([]Result, 0, len(runs))
	for _, r := range runs {
		out = append(out, r.snapshot())
	}
	writeJSON(w, http.StatusOK, out)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// runCmd runs `workload run`: one load run in the foreground, its Result printed on out.
func runCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var spec Spec
	var duration, interval, timeout time.Duration
	fs.StringVar(&spec.Target, "target", "", "HOST:PORT to send to (required)")
	fs.StringVar(&spec.Kind, "kind", "", "http, tcp-stream or udp (required)")
	fs.DurationVar(&duration, "duration", defaultDuration, "how long to send")
	fs.IntVar(&spec.Workers, "workers", 1, "http: concurrent workers (at most 64)")
	fs.IntVar(&spec.Streams, "streams", 1, "tcp-stream: concurrent streams (at most 64)")
	fs.DurationVar(&interval, "interval", defaultInterval, "time between the requests of one worker or stream")
	fs.DurationVar(&timeout, "timeout", defaultTimeout, "per-request timeout")
	fs.IntVar(&spec.MaxRequests, "maxRequests", defaultMaxRequests, "stop after this many requests")
	fs.IntVar(&spec.MaxRequests, "max-requests", defaultMaxRequests, "same as --maxRequests")
	fs.StringVar(&spec.Path, "path", "/", "http: path to GET")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	spec.Duration, spec.Interval, spec.Timeout = Duration(duration), Duration(interval), Duration(timeout)
	if err := spec.normalize(); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	r := newRun("", spec)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	defer context.AfterFunc(ctx, r.stopSending)()
	r.execute()
	res := r.snapshot()
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if res.Error != "" {
		return fmt.Errorf("run: %s", res.Error)
	}
	return nil
}
