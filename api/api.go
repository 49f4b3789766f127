// Package api is the daemon's local API: JSON over HTTP on a unix socket (mode 0600, root only).
// `svcproxy status` and svcproxy-cni are its clients. This package holds the wire types, the
// listener and a small client; the daemon supplies the handlers.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Paths of the API.
const (
	PathStatus = "/v1/status"
)

// Status is what `svcproxy status` shows.
type Status struct {
	Version  string `json:"version"`
	NodeName string `json:"nodeName"`
	Mode     string `json:"mode"`
	// ModeReason says why this mode runs (e.g. why auto chose it).
	ModeReason string `json:"modeReason,omitempty"`
	Source     string `json:"source"`
	// ConfigError is the last invalid config's error; the last good state stays programmed.
	ConfigError       string    `json:"configError,omitempty"`
	ConfigLoaded      time.Time `json:"configLoaded,omitzero"`
	DesiredGeneration uint64    `json:"desiredGeneration"`
	AppliedGeneration uint64    `json:"appliedGeneration"`
	LastSync          time.Time `json:"lastSync,omitzero"`
	LastFullSync      time.Time `json:"lastFullSync,omitzero"`
	LastSyncDuration  string    `json:"lastSyncDuration,omitempty"`
	LastSyncError     string    `json:"lastSyncError,omitempty"`
	Healthy           bool      `json:"healthy"`
	HealthReason      string    `json:"healthReason,omitempty"`
	Services          []Service `json:"services"`
	IPAM              []Range   `json:"ipam,omitempty"`
	// Pods are the pod IP allocations of this node (made through svcproxy-cni).
	Pods []PodIPs `json:"pods,omitempty"`
}

// PodIPs is one pod attachment and its addresses.
type PodIPs struct {
	Namespace   string            `json:"namespace,omitempty"`
	Name        string            `json:"name,omitempty"`
	ContainerID string            `json:"containerID"`
	IfName      string            `json:"ifName"`
	IPs         []string          `json:"ips"`
	Labels      map[string]string `json:"labels,omitempty"`
	Allocated   time.Time         `json:"allocated,omitzero"`
}

// Service is one programmed service.
type Service struct {
	Namespace       string   `json:"namespace"`
	Name            string   `json:"name"`
	Type            string   `json:"type"`
	ClusterIPs      []string `json:"clusterIPs"`
	ExternalIPs     []string `json:"externalIPs,omitempty"`
	LoadBalancerIPs []string `json:"loadBalancerIPs,omitempty"`
	SessionAffinity string   `json:"sessionAffinity,omitempty"`
	Ports           []Port   `json:"ports"`
}

// Port is one port of a service with its endpoints.
type Port struct {
	Name      string     `json:"name,omitempty"`
	Protocol  string     `json:"protocol"`
	Port      uint16     `json:"port"`
	NodePort  uint16     `json:"nodePort,omitempty"`
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one endpoint and the state the proxy gives it.
type Endpoint struct {
	Address string `json:"address"`
	Node    string `json:"node,omitempty"`
	Zone    string `json:"zone,omitempty"`
	// State is "active" (new connections go to it), "draining" (terminating but used since
	// nothing is ready), "local-only", or "unused" (not ready, or filtered by topology).
	State       string `json:"state"`
	Ready       bool   `json:"ready"`
	Serving     bool   `json:"serving"`
	Terminating bool   `json:"terminating"`
}

// Range is the usage of one IPAM range.
type Range struct {
	Kind    string `json:"kind"` // pod, service, nodePort
	Range   string `json:"range"`
	Size    uint64 `json:"size"`
	Used    uint64 `json:"used"`
	Cooling uint64 `json:"coolingDown,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"error"`
	// Code is a CNI error code where one applies (e.g. 50 for "not ready").
	Code int `json:"code,omitempty"`
}

func (e *Error) Error() string { return e.Message }

// Listen opens the unix socket at path with mode 0600, creating its directory (0700) when
// missing and replacing a stale socket. It fails when another live daemon answers on path.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("api socket %s: another daemon is listening there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("api socket %s: removing stale socket: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("api socket %s: %w", path, err)
	}
	return l, nil
}

// WriteJSON writes v with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WriteError writes an Error with status code.
func WriteError(w http.ResponseWriter, code int, cniCode int, err error) {
	WriteJSON(w, code, &Error{Message: err.Error(), Code: cniCode})
}

// Client talks to the daemon over its socket.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client of the daemon listening on socket path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{path: path, http: &http.Client{Transport: tr}}
}

// Do sends in (nil for GET) to path and decodes the answer into out (may be nil). It fails
// when the daemon is unreachable (wrapped ErrUnreachable) or answers an error (*Error).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://svcproxy"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w at %s: %v", ErrUnreachable, c.path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading answer of %s: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding answer of %s: %w", path, err)
		}
	}
	return nil
}

// ErrUnreachable means no daemon answered on the socket.
var ErrUnreachable = errors.New("svcproxy daemon not reachable")

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	s := &Status{}
	return s, c.Do(ctx, http.MethodGet, PathStatus, nil, s)
}
