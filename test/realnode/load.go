package realnode

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/test/e2e/harness"
)

// LoadSpec is one load run of the workload's client (test/realnode/cmd/workload): kind http
// (a fresh TCP connection per request), tcp-stream (long-lived connections, one line per
// interval) or udp (one connected UDP socket).
type LoadSpec struct {
	Target      string `json:"target"`
	Kind        string `json:"kind"`
	Duration    string `json:"duration"`
	Workers     int    `json:"workers,omitempty"`
	Streams     int    `json:"streams,omitempty"`
	Interval    string `json:"interval,omitempty"`
	Timeout     string `json:"timeout,omitempty"`
	MaxRequests int    `json:"maxRequests,omitempty"`
}

// LoadResult is what a run reports.
type LoadResult struct {
	Kind     string         `json:"kind"`
	Target   string         `json:"target"`
	Sent     int            `json:"sent"`
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Failures map[string]int `json:"failures"`
	Errors   []struct {
		At  string `json:"at"`
		Err string `json:"err"`
	} `json:"errors"`
	Backends   map[string]int `json:"backends"`
	Reconnects int            `json:"reconnects"`
	LongestGap string         `json:"longestGap"`
	FirstSeen  []struct {
		Name string `json:"name"`
		At   string `json:"at"`
	} `json:"firstSeen"`
	Duration string `json:"duration"`
}

// Summary is one line for the log: kind, target, sent, failed, per backend.
func (r *LoadResult) Summary() string {
	names := make([]string, 0, len(r.Backends))
	for n := range r.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s=%d", n, r.Backends[n]))
	}
	s := fmt.Sprintf("%s %s: sent %d, failed %d", r.Kind, r.Target, r.Sent, r.Failed)
	if r.Reconnects > 0 {
		s += fmt.Sprintf(", reconnects %d", r.Reconnects)
	}
	if r.LongestGap != "" && r.LongestGap != "0s" {
		s += ", longest gap " + r.LongestGap
	}
	s += " [" + strings.Join(parts, " ") + "]"
	if r.Failed > 0 && len(r.Errors) > 0 {
		var errs []string
		for i, e := range r.Errors {
			if i == 3 {
				break
			}
			errs = append(errs, e.At+" "+e.Err)
		}
		s += " errors: " + strings.Join(errs, "; ")
	}
	return s
}

// ClientPod is a workload client pod whose control API (port 9000) the bench reaches from a
// node's network namespace.
type ClientPod struct {
	Name string
	IP   string
	via  *harness.NetNS
}

func (c *ClientPod) http() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: c.via.DialContext, DisableKeepAlives: true}}
}

// Start starts a run in the pod and returns its id.
func (c *ClientPod) Start(spec LoadSpec) (string, error) {
	body, _ := json.Marshal(spec)
	resp, err := c.http().Post("http://"+net.JoinHostPort(c.IP, "9000")+"/run", "application/json", bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("client pod %s: starting %s run: %w", c.Name, spec.Kind, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("client pod %s: starting run: %s: %s", c.Name, resp.Status, b)
	}
	var r struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("client pod %s: %w: %s", c.Name, err, b)
	}
	return r.ID, nil
}

// Result waits for run id to finish and returns its result.
func (c *ClientPod) Result(ctx context.Context, id string) (*LoadResult, error) {
	for {
		resp, err := c.http().Get("http://" + net.JoinHostPort(c.IP, "9000") + "/run/" + id)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				var r LoadResult
				if err := json.Unmarshal(b, &r); err != nil {
					return nil, fmt.Errorf("client pod %s: %w: %s", c.Name, err, b)
				}
				return &r, nil
			case http.StatusAccepted:
			default:
				return nil, fmt.Errorf("client pod %s: run %s: %s: %s", c.Name, id, resp.Status, b)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("client pod %s: run %s: %w (last error %v)", c.Name, id, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Run starts a run and waits for its result.
func (c *ClientPod) Run(ctx context.Context, spec LoadSpec) (*LoadResult, error) {
	id, err := c.Start(spec)
	if err != nil {
		return nil, err
	}
	return c.Result(ctx, id)
}

// runProcess runs `workload run` as a process: cmd is prepared by the caller (a node's
// Command, or plain exec in the external namespace) and started inside ns.
func runProcess(ns *harness.NetNS, cmd *exec.Cmd) (*LoadResult, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := ns.Do(cmd.Run); err != nil {
		return nil, fmt.Errorf("workload run in %s: %w: %s", ns.Name, err, errb.String())
	}
	var r LoadResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("workload run in %s: %w: %s", ns.Name, err, out.String())
	}
	return &r, nil
}

// args renders the spec as `workload run` flags.
func (s LoadSpec) args() []string {
	a := []string{"run", "--target", s.Target, "--kind", s.Kind, "--duration", s.Duration}
	if s.Workers > 0 {
		a = append(a, "--workers", fmt.Sprint(s.Workers))
	}
	if s.Streams > 0 {
		a = append(a, "--streams", fmt.Sprint(s.Streams))
	}
	if s.Interval != "" {
		a = append(a, "--interval", s.Interval)
	}
	if s.Timeout != "" {
		a = append(a, "--timeout", s.Timeout)
	}
	if s.MaxRequests > 0 {
		a = append(a, "--max-requests", fmt.Sprint(s.MaxRequests))
	}
	return a
}
