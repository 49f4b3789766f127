// Command workload is the test workload of the real-kubelet bench: the server that runs in the
// backend pods of a Service, and the load generator that talks to it. It is one static binary
// (CGO_ENABLED=0, standard library only), so the image needs no shell.
//
//	workload serve [--http :8080] [--tcp :9090] [--udp :9091] [--name NAME] [--drain 0s] [--shutdown-timeout 30s]
//	workload client [--listen :9000]
//	workload run --target IP:PORT --kind http|tcp-stream|udp [--duration 10s] [--workers 1] [--streams 1]
//	             [--interval 20ms] [--timeout 2s] [--maxRequests 200000] [--path /]
//	workload sleep SECONDS
//
// serve is the backend pod. NAME defaults to $POD_NAME, else the hostname; an empty address
// (--udp "") turns that protocol off. Every HTTP GET
// answers 200 with the body "NAME\n"; GET /healthz does too while the server is not draining
// and 503 once it is (use it as the readiness probe). The TCP port speaks a line protocol on
// long-lived connections: each line the client sends is answered with "NAME <line>\n", and the
// server never closes a connection first unless it is shutting down. Every UDP datagram is
// answered with one datagram "NAME <payload>". On SIGTERM (or SIGINT) the server at once fails
// /healthz and answers HTTP with "Connection: close", keeps serving old and new connections for
// --drain (a second signal ends the drain early), then stops accepting, lets in-flight HTTP
// requests finish, answers the line each TCP stream is in the middle of, closes the streams with
// a FIN and exits 0 (streams still open after --shutdown-timeout are cut).
//
// client is the long-running load-generator pod. It serves a control API on --listen:
//
//	POST /run        body: a Spec as JSON; starts a run, answers 200 {"id":"run-1"} at once
//	GET  /run/ID     the Result: 200 when the run is done, 202 (partial counters) while it runs,
//	                 404 for an unknown ID; ?wait=30s blocks until done or 30s have passed
//	GET  /run        every run's Result, oldest first
//	GET  /healthz    200
//
// Several runs may go at once (at most 32 running); results stay until the process exits.
//
// run does one load run in the foreground and prints its Result as JSON on stdout (for running
// as a plain process in a node or client network namespace). SIGINT or SIGTERM stops it early;
// the result printed then covers what was sent so far.
//
// sleep waits SECONDS (a number of seconds or a Go duration such as 5s) and exits 0: the image
// has no shell, so a preStop exec hook runs `workload sleep 5`.
//
// A load run, whatever its kind, starts no request once --duration has passed or --maxRequests
// requests have been sent, and then waits for the ones in flight (at most --timeout). Kinds:
//
//   - http: --workers goroutines (at most 64), each making a fresh TCP connection for every
//     request (no keep-alive: a new source port each time) and sending GET PATH; the body is the
//     backend's name. A reply other than 200 is a failure.
//   - tcp-stream: --streams long-lived TCP connections (at most 64), each sending one line per
//     interval and waiting --timeout for its answer. A stream the server closed cleanly (FIN)
//     while no request was outstanding is reopened and counted in "reconnects", not as a
//     failure; a stream that breaks any other way (reset, EOF or no answer while a request is
//     outstanding, reset while idle) fails that request and is reopened for the next one. A
//     request on a closed stream first dials; a dial that fails fails the request.
//   - udp: ONE connected UDP socket (net.DialUDP) for the whole run, one datagram per interval,
//     each waiting --timeout for its answer (several may be outstanding). An ICMP error reported
//     on the socket (refused, unreachable) fails every datagram outstanding at that moment.
//     A socket the kernel aborted (ECONNABORTED, EDESTADDRREQ: destroyed by a proxy whose
//     backend went away) is replaced by a new connected socket, counted as a reconnect.
//
// Each worker or stream starts a request every interval, or as soon as the previous one ended
// if that took longer. Failures are sorted into refused (ECONNREFUSED, including ICMP port
// unreachable), timeout, reset (ECONNRESET, EPIPE, or EOF while a reply was awaited),
// unreachable (EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, ENETDOWN) and other; the first 20 failures
// are kept with their message and the time they happened.
//
// A Spec (JSON body of POST /run; the flags of run carry the same names) is
//
//	{"target":"10.96.0.10:80", "kind":"http"|"tcp-stream"|"udp", "duration":"20s",
//	 "workers":4, "streams":4, "interval":"20ms", "timeout":"2s", "maxRequests":100000, "path":"/"}
//
// target and kind are required; the others default to duration 10s, workers 1, streams 1,
// interval 20ms (0 means the default; at least 1ms), timeout 2s, maxRequests 200000 (at most
// 1000000), path "/" (http only). workers and streams above 64 are lowered to 64. Durations are
// Go duration strings, or integers in nanoseconds (what encoding/json makes of a time.Duration).
// Unknown fields are rejected. A Result is
//
//	{"id":"run-1", "done":true, "error":"...", "kind":"http", "target":"10.96.0.10:80",
//	 "spec":{...the Spec with defaults applied...},
//	 "sent":1000, "ok":990, "failed":10, "inFlight":0,
//	 "failures":{"refused":10,"timeout":0,"reset":0,"unreachable":0,"other":0},
//	 "errors":[{"at":"1.234s","err":"dial tcp 10.96.0.10:80: connect: connection refused"}],
//	 "backends":{"pod-a":500,"pod-b":490}, "reconnects":0, "longestGap":"180ms",
//	 "firstSeen":[{"name":"pod-a","at":"2.1ms"},{"name":"pod-b","at":"5.3ms"}],
//	 "started":"2026-01-02T15:04:05.123456789Z", "duration":"20.01s"}
//
// sent counts requests started, so sent = ok + failed + inFlight, and inFlight is 0 once done.
// error is set (and nothing sent) only when the run could not start at all, e.g. a target that
// does not resolve. Every "at" is an offset from started: for errors, when the failure was seen;
// for firstSeen, when the first reply from that backend arrived. longestGap is the longest run
// of consecutive failed requests, ordered by the time they were sent, measured from the sending
// of its first failure to the sending of the next successful request (or to the end of the run).
// duration is how long the run took, in-flight requests included. All durations are Go duration
// strings (time.ParseDuration reads them back).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

const usage = `usage:
  workload serve [--http :8080] [--tcp :9090] [--udp :9091] [--name NAME] [--drain 0s]
                 [--shutdown-timeout 30s]
  workload client [--listen :9000]
  workload run --target IP:PORT --kind http|tcp-stream|udp [--duration 10s] [--workers 1]
               [--streams 1] [--interval 20ms] [--timeout 2s] [--maxRequests 200000] [--path /]
  workload sleep SECONDS`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		sigs := make(chan os.Signal, 2)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		err = serveCmd(os.Args[2:], sigs, nil)
	case "client":
		err = clientCmd(os.Args[2:])
	case "run":
		err = runCmd(os.Args[2:], os.Stdout)
	case "sleep":
		err = sleepCmd(os.Args[2:])
	case "help", "-h", "-help", "--help":
		fmt.Println(usage)
		return
	default:
		err = fmt.Errorf("unknown command %q\n%s", os.Args[1], usage)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}

// sleepCmd is for preStop exec hooks: the image has no shell, hence no sleep(1).
func sleepCmd(args []string) error {
	if len(args) != 1 {
		return errors.New("sleep: want exactly one argument, SECONDS")
	}
	d, err := parseSeconds(args[0])
	if err != nil {
		return fmt.Errorf("sleep: %w", err)
	}
	time.Sleep(d)
	return nil
}

// parseSeconds reads "5", "0.5" (seconds) or a Go duration such as "1500ms".
func parseSeconds(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f < 0 || f > 1e6 {
			return 0, fmt.Errorf("%q: out of range", s)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want seconds or a duration such as 5s", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: negative", s)
	}
	return d, nil
}
