package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ServeSpec lists the ports a pod's server listens on (on every address of the pod).
type ServeSpec struct {
	TCP  []uint16
	UDP  []uint16
	HTTP []uint16
}

// StartServer starts podserver in pod, answering with the pod's name, and returns once every
// listener is open.
func (s *Sandbox) StartServer(ctx context.Context, pod *Pod, spec ServeSpec) (*Process, error) {
	if s.PodServer == "" {
		return nil, errors.New("netns: StartServer: the sandbox has no podserver binary (Options.PodServer)")
	}
	argv := []string{s.PodServer, "serve", "--name", pod.PodName}
	for _, p := range spec.TCP {
		argv = append(argv, "--tcp", ":"+strconv.Itoa(int(p)))
	}
	for _, p := range spec.UDP {
		argv = append(argv, "--udp", ":"+strconv.Itoa(int(p)))
	}
	for _, p := range spec.HTTP {
		argv = append(argv, "--http", ":"+strconv.Itoa(int(p)))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.Start(ctx, ProcSpec{Name: "server-" + pod.PodName, NS: &pod.Namespace, Argv: argv, ReadyLine: "ready"})
}

// Proto is what a probe speaks.
type Proto string

// Probe protocols.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	HTTP Proto = "http"
)

// ProbeSpec describes a batch of fresh connections.
type ProbeSpec struct {
	Proto Proto
	Addr  netip.AddrPort
	// Count fresh connections (each from a new socket, so a new source port).
	Count int
	// Timeout per connection; 2s when zero.
	Timeout time.Duration
	// Parallel connections in flight; 4 when zero. Use 1 for a strict sequence.
	Parallel int
	// Source binds the client socket to this local address when valid.
	Source netip.Addr
	// SourcePort binds every datagram's socket to this local port (UDP with Parallel 1 only),
	// so all of them share one 5-tuple, hence one conntrack entry.
	SourcePort uint16
	// Path is the HTTP path to GET (Proto HTTP only); "/" when empty.
	Path string
	// MaxFailures, when > 0, stops starting new connections once that many failed (the rest
	// count as Skipped), so a broken path does not cost Count timeouts.
	MaxFailures int
}

// ProbeResult counts the outcomes of a probe.
type ProbeResult struct {
	// Replies counts answers per pod name.
	Replies map[string]int `json:"replies"`
	// Peers counts the client addresses the servers saw.
	Peers map[string]int `json:"peers"`
	// Refused counts connections refused at once (TCP RST or ICMP port unreachable).
	Refused int `json:"refused"`
	// Rejected counts sends the local firewall refused at once (EPERM), as a REJECT or DROP
	// in the sender's own OUTPUT chain does: immediate, but not proof of a REJECT.
	Rejected int `json:"rejected"`
	// Unreachable counts ICMP host or network unreachable.
	Unreachable int `json:"unreachable"`
	// Timeout counts connections that got no answer within the timeout.
	Timeout int `json:"timeout"`
	// Errors counts any other failure by its message.
	Errors map[string]int `json:"errors"`
	// Skipped counts connections not attempted because MaxFailures was reached.
	Skipped int `json:"skipped"`
	// Sequence is each connection's outcome in order: a pod name or "!refused",
	// "!rejected", "!unreachable", "!timeout", "!error".
	Sequence []string `json:"sequence"`
}

// OK is the number of connections that got an answer.
func (r ProbeResult) OK() int {
	n := 0
	for _, c := range r.Replies {
		n += c
	}
	return n
}

// Failed is the number of connections without an answer.
func (r ProbeResult) Failed() int {
	n := r.Refused + r.Rejected + r.Unreachable + r.Timeout
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// Total is the number of connections made.
func (r ProbeResult) Total() int { return r.OK() + r.Failed() }

// String summarises the result, e.g. "pod-a=98 pod-b=101 pod-c=101 refused=0 ...".
func (r ProbeResult) String() string {
	var b strings.Builder
	names := make([]string, 0, len(r.Replies))
	for n := range r.Replies {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s=%d ", n, r.Replies[n])
	}
	fmt.Fprintf(&b, "refused=%d rejected=%d unreachable=%d timeout=%d", r.Refused, r.Rejected, r.Unreachable, r.Timeout)
	for m, c := range r.Errors {
		fmt.Fprintf(&b, " error[%s]=%d", m, c)
	}
	if r.Skipped > 0 {
		fmt.Fprintf(&b, " skipped=%d (stopped after too many failures)", r.Skipped)
	}
	return b.String()
}

// HTTPGet fetches url once from inside ns and returns the status code and body.
func (s *Sandbox) HTTPGet(ctx context.Context, ns *Namespace, url string) (int, string, error) {
	if s.PodServer == "" {
		return 0, "", errors.New("netns: HTTPGet: the sandbox has no podserver binary (Options.PodServer)")
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := run(ctx, "ip", "netns", "exec", ns.Name, s.PodServer, "get", url)
	if err != nil {
		return 0, "", err
	}
	first, body, _ := strings.Cut(string(out), "\n")
	code, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, "", fmt.Errorf("netns: HTTPGet %s: bad output %q", url, out)
	}
	return code, body, nil
}

// Probe opens spec.Count fresh connections from inside ns (running podserver probe there, in
// the sandbox's cgroup unless ns is the external client) and counts who answered.
func (s *Sandbox) Probe(ctx context.Context, ns *Namespace, spec ProbeSpec) (ProbeResult, error) {
	var res ProbeResult
	if s.PodServer == "" {
		return res, errors.New("netns: Probe: the sandbox has no podserver binary (Options.PodServer)")
	}
	if spec.Timeout == 0 {
		spec.Timeout = 2 * time.Second
	}
	if spec.Parallel == 0 {
		spec.Parallel = 4
	}
	if spec.Count == 0 {
		spec.Count = 1
	}
	if spec.Proto == "" {
		spec.Proto = TCP
	}
	argv := []string{"ip", "netns", "exec", ns.Name, s.PodServer, "probe",
		"--proto", string(spec.Proto), "--addr", spec.Addr.String(),
		"--count", strconv.Itoa(spec.Count), "--timeout", spec.Timeout.String(),
		"--parallel", strconv.Itoa(spec.Parallel)}
	if spec.Path != "" {
		argv = append(argv, "--path", spec.Path)
	}
	if spec.SourcePort != 0 {
		argv = append(argv, "--source-port", strconv.Itoa(int(spec.SourcePort)))
	}
	if spec.MaxFailures > 0 {
		argv = append(argv, "--max-failures", strconv.Itoa(spec.MaxFailures))
	}
	if spec.Source.IsValid() {
		argv = append(argv, "--source", spec.Source.String())
	}
	// Bound the whole probe: every connection may time out.
	waves := (spec.Count + spec.Parallel - 1) / spec.Parallel
	ctx, cancel := context.WithTimeout(ctx, time.Duration(waves+2)*spec.Timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if s.inCgroup(ns) {
		cg, err := os.Open(s.Cgroup)
		if err != nil {
			return res, fmt.Errorf("netns: Probe: open cgroup: %w", err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = int(cg.Fd())
	}
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("netns: probe %s %s from %s: %w: %s", spec.Proto, spec.Addr, ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return res, fmt.Errorf("netns: probe %s %s from %s: bad output %q: %w", spec.Proto, spec.Addr, ns.Name, stdout.String(), err)
	}
	return res, nil
}
