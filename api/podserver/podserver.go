// Package podserver is the daemon side of the pod API (api.PathPods*): the HTTP handlers that
// svcproxy-cni calls on the daemon's unix socket to allocate, check, release and
// garbage-collect pod IPs and to ask whether the pod network is ready.
//
// The handlers validate requests, translate them to calls of a PodIPAM (the daemon's
// persistent allocator behind a small adapter) and answer with the node's pod network
// (bridge, MTU, gateway per family) from a NetInfo. They touch no kernel state.
package podserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	cniutils "github.com/containernetworking/cni/pkg/utils"
	"k8s.io/apimachinery/pkg/api/validate/content"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/svcproxy/svcproxy/api"
)

// Errors a PodIPAM returns (wrapped is fine: they are matched with errors.Is).
var (
	// ErrNotFound: the attachment has no allocation (Check answers 404 with
	// api.CodeNoAllocation).
	ErrNotFound = errors.New("no allocation for this attachment")
	// ErrExhausted: a pod range has no free address (Allocate answers 503 with
	// api.CodeNotAvailable).
	ErrExhausted = errors.New("pod range exhausted")
	// ErrNotReady: the IPAM cannot answer yet (e.g. this node's pod range is not known); every
	// call answers 503 with api.CodeTryAgainLater, so the runtime retries.
	ErrNotReady = errors.New("pod IPAM not ready")
	// ErrGCRefused: GC would free what may still be in use (an empty list of valid
	// attachments while pods are allocated); nothing was freed. GC answers 409 with
	// api.CodeTryAgainLater and the reason.
	ErrGCRefused = errors.New("pod GC refused")
)

// writeIPAMError answers an error of the PodIPAM: ErrNotReady as "try again later", anything
// else as an I/O failure.
func writeIPAMError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotReady) {
		api.WriteError(w, http.StatusServiceUnavailable, api.CodeTryAgainLater, err)
		return
	}
	api.WriteError(w, http.StatusInternalServerError, api.CodeIOFailure, err)
}

// Attachment names one interface of one container, the unit of allocation.
type Attachment struct {
	ContainerID string
	IfName      string
}

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

// Pod is an attachment with the identity of its pod.
type Pod struct {
	Attachment
	Namespace string
	Name      string
	// UID is the pod's UID when known (CNI_ARGS K8S_POD_UID, or the daemon's API view);
	// cluster GC matches allocations to pods by it.
	UID    string
	Labels map[string]string
	// Netns is the path of the pod's network namespace, for the record.
	Netns string
}

// Released is one allocation freed by GC.
type Released struct {
	Attachment
	Namespace string
	Name      string
	Addrs     []netip.Addr
}

// PodIPAM is what the handlers need from the daemon's pod IP allocator.
type PodIPAM interface {
	// Allocate returns the pod's addresses, one per pod range (family), allocating them on the
	// first call for p.Attachment and returning the same ones on later calls (it may update
	// the recorded identity and labels). It fails with an error matching ErrExhausted when a
	// range has no free address.
	Allocate(ctx context.Context, p Pod) ([]netip.Addr, error)
	// Release frees the addresses of a; an attachment without allocation is not an error.
	Release(ctx context.Context, a Attachment) error
	// Check returns the addresses held by a, or an error matching ErrNotFound.
	Check(ctx context.Context, a Attachment) ([]netip.Addr, error)
	// GC frees pod allocations whose attachment is not in valid and returns them. It may free
	// fewer than that (a grace period, a cap per call) and may refuse with an error matching
	// ErrGCRefused (e.g. an empty valid while pods are allocated).
	GC(ctx context.Context, valid []Attachment) ([]Released, error)
	// Ready returns nil when every pod range can serve one more allocation, else an error
	// saying why not (e.g. "no free pod IP left in 10.244.1.0/24").
	Ready(ctx context.Context) error
}

// Range is one pod range of the node with the bridge's address in it.
type Range struct {
	Prefix  netip.Prefix // e.g. 10.244.1.0/24 (the node's podCIDR)
	Gateway netip.Addr   // e.g. 10.244.1.1
}

// Network is the node's pod network. It is a NetInfo of itself, for static settings.
type Network struct {
	Bridge string // e.g. "svc0"
	MTU    int    // 0: kernel default
	Ranges []Range
}

// PodNetwork returns n.
func (n Network) PodNetwork() Network { return n }

// NetInfo gives the node's current pod network; it is asked on every request, so a reloaded
// config takes effect at once.
type NetInfo interface {
	PodNetwork() Network
}

// maxBody bounds a request body.
const maxBody = 1 << 20

// Server holds the pod API handlers.
type Server struct {
	ipam PodIPAM
	net  NetInfo
	log  *slog.Logger
	mux  *http.ServeMux
}

// New returns the pod API handlers over ipam and net. log may be nil (logs are discarded).
// Serve the result directly, or Register it on the daemon's mux.
func New(ipam PodIPAM, net NetInfo, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{ipam: ipam, net: net, log: log, mux: http.NewServeMux()}
	s.Register(s.mux)
	return s
}

// Register adds the handlers of every api.PathPods* path to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathPodsAllocate, s.allocate)
	mux.HandleFunc("POST "+api.PathPodsRelease, s.release)
	mux.HandleFunc("POST "+api.PathPodsCheck, s.check)
	mux.HandleFunc("POST "+api.PathPodsGC, s.gc)
	mux.HandleFunc("GET "+api.PathPodsStatus, s.status)
}

// ServeHTTP serves the pod API paths.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// fieldError is a request field that fails validation.
type fieldError struct {
	field string
	code  int
	msg   string
}

func (e *fieldError) Error() string { return "invalid " + e.field + ": " + e.msg }

func badRequest(w http.ResponseWriter, path string, err error) {
	code := api.CodeDecodeFailure
	var fe *fieldError
	if errors.As(err, &fe) {
		code = fe.code
	}
	api.WriteError(w, http.StatusBadRequest, code, fmt.Errorf("%s: %w", path, err))
}

func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty request body, want a JSON object")
		}
		return fmt.Errorf("decoding request body: %w", err)
	}
	return nil
}

func validateAttachment(containerID, ifName string) error {
	if e := cniutils.ValidateContainerID(containerID); e != nil {
		return &fieldError{field: "containerID", code: api.CodeInvalidEnv, msg: describe(e.Msg, containerID)}
	}
	if e := cniutils.ValidateInterfaceName(ifName); e != nil {
		return &fieldError{field: "ifName", code: api.CodeInvalidEnv, msg: describe(e.Msg, ifName)}
	}
	return nil
}

func describe(msg, value string) string { return fmt.Sprintf("%s (got %q)", msg, value) }

func validatePod(req *api.PodAllocateRequest) error {
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		return err
	}
	if req.PodNamespace != "" {
		if errs := validation.IsDNS1123Label(req.PodNamespace); len(errs) > 0 {
			return &fieldError{field: "podNamespace", code: api.CodeInvalidConfig, msg: describe(strings.Join(errs, "; "), req.PodNamespace)}
		}
	}
	if req.PodName != "" {
		if errs := validation.IsDNS1123Subdomain(req.PodName); len(errs) > 0 {
			return &fieldError{field: "podName", code: api.CodeInvalidConfig, msg: describe(strings.Join(errs, "; "), req.PodName)}
		}
	}
	for _, k := range sortedKeys(req.Labels) {
		if errs := content.IsLabelKey(k); len(errs) > 0 {
			return &fieldError{field: "labels", code: api.CodeInvalidConfig, msg: describe("key: "+strings.Join(errs, "; "), k)}
		}
		if errs := content.IsLabelValue(req.Labels[k]); len(errs) > 0 {
			return &fieldError{field: "labels[" + k + "]", code: api.CodeInvalidConfig, msg: describe(strings.Join(errs, "; "), req.Labels[k])}
		}
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// allocation renders addrs with the prefix length and gateway of the range holding each.
func allocation(n Network, addrs []netip.Addr) (*api.PodAllocation, error) {
	out := &api.PodAllocation{Bridge: n.Bridge, MTU: n.MTU, IPs: make([]api.PodIP, 0, len(addrs))}
	for _, a := range addrs {
		i := slices.IndexFunc(n.Ranges, func(r Range) bool { return r.Prefix.Contains(a) })
		if i < 0 {
			return nil, fmt.Errorf("allocated address %s is in no pod range of the node (%s)", a, rangesString(n.Ranges))
		}
		r := n.Ranges[i]
		out.IPs = append(out.IPs, api.PodIP{Address: netip.PrefixFrom(a, r.Prefix.Bits()).String(), Gateway: r.Gateway.String()})
	}
	return out, nil
}

func rangesString(rs []Range) string {
	if len(rs) == 0 {
		return "none configured"
	}
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.Prefix.String()
	}
	return strings.Join(s, ", ")
}

// networkProblem says why n cannot serve pods, or "" when it can.
func networkProblem(n Network) string {
	switch {
	case n.Bridge == "":
		return "no pod bridge configured"
	case len(n.Ranges) == 0:
		return "this node's pod range is not known (no podCIDR in the config, or in cluster mode the Node's spec.podCIDRs not seen yet)"
	}
	return ""
}

func (s *Server) allocate(w http.ResponseWriter, r *http.Request) {
	var req api.PodAllocateRequest
	if err := decode(w, r, &req); err != nil {
		badRequest(w, api.PathPodsAllocate, err)
		return
	}
	if err := validatePod(&req); err != nil {
		badRequest(w, api.PathPodsAllocate, err)
		return
	}
	n := s.net.PodNetwork()
	if p := networkProblem(n); p != "" {
		api.WriteError(w, http.StatusServiceUnavailable, api.CodeNotAvailable, errors.New("pod network not ready: "+p))
		return
	}
	pod := Pod{
		Attachment: Attachment{ContainerID: req.ContainerID, IfName: req.IfName},
		Namespace:  req.PodNamespace, Name: req.PodName, UID: req.PodUID, Labels: req.Labels, Netns: req.Netns,
	}
	addrs, err := s.ipam.Allocate(r.Context(), pod)
	if err != nil {
		s.log.Warn("pod IP allocation failed", "attachment", pod.Attachment.String(), "pod", req.PodNamespace+"/"+req.PodName, "err", err)
		if errors.Is(err, ErrExhausted) {
			api.WriteError(w, http.StatusServiceUnavailable, api.CodeNotAvailable, err)
			return
		}
		writeIPAMError(w, fmt.Errorf("allocating pod IP for %s: %w", pod.Attachment, err))
		return
	}
	out, err := allocation(n, addrs)
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, api.CodeIOFailure, err)
		return
	}
	s.log.Info("pod IP allocated", "attachment", pod.Attachment.String(), "pod", req.PodNamespace+"/"+req.PodName, "ips", addrs)
	api.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	var req api.PodAttachment
	if err := decode(w, r, &req); err != nil {
		badRequest(w, api.PathPodsRelease, err)
		return
	}
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		badRequest(w, api.PathPodsRelease, err)
		return
	}
	a := Attachment(req)
	if err := s.ipam.Release(r.Context(), a); err != nil && !errors.Is(err, ErrNotFound) {
		writeIPAMError(w, fmt.Errorf("releasing pod IP of %s: %w", a, err))
		return
	}
	s.log.Info("pod IP released", "attachment", a.String())
	api.WriteJSON(w, http.StatusOK, struct{}{})
}

func (s *Server) check(w http.ResponseWriter, r *http.Request) {
	var req api.PodAttachment
	if err := decode(w, r, &req); err != nil {
		badRequest(w, api.PathPodsCheck, err)
		return
	}
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		badRequest(w, api.PathPodsCheck, err)
		return
	}
	a := Attachment(req)
	addrs, err := s.ipam.Check(r.Context(), a)
	switch {
	case errors.Is(err, ErrNotFound):
		api.WriteError(w, http.StatusNotFound, api.CodeNoAllocation, fmt.Errorf("attachment %s has no pod IP allocated", a))
		return
	case err != nil:
		writeIPAMError(w, fmt.Errorf("looking up pod IP of %s: %w", a, err))
		return
	}
	out, err := allocation(s.net.PodNetwork(), addrs)
	if err != nil {
		api.WriteError(w, http.StatusInternalServerError, api.CodeIOFailure, err)
		return
	}
	api.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) gc(w http.ResponseWriter, r *http.Request) {
	var req api.PodGCRequest
	if err := decode(w, r, &req); err != nil {
		badRequest(w, api.PathPodsGC, err)
		return
	}
	valid := make([]Attachment, 0, len(req.ValidAttachments))
	for i, a := range req.ValidAttachments {
		if err := validateAttachment(a.ContainerID, a.IfName); err != nil {
			var fe *fieldError
			errors.As(err, &fe)
			fe.field = fmt.Sprintf("validAttachments[%d].%s", i, fe.field)
			badRequest(w, api.PathPodsGC, fe)
			return
		}
		valid = append(valid, Attachment(a))
	}
	released, err := s.ipam.GC(r.Context(), valid)
	if errors.Is(err, ErrGCRefused) {
		s.log.Warn("pod GC refused", "validAttachments", len(valid), "err", err)
		api.WriteError(w, http.StatusConflict, api.CodeTryAgainLater, fmt.Errorf("garbage-collecting pod IPs: %w", err))
		return
	}
	if err != nil {
		writeIPAMError(w, fmt.Errorf("garbage-collecting pod IPs: %w", err))
		return
	}
	out := &api.PodGCResult{Released: make([]api.PodReleased, 0, len(released))}
	for _, rel := range released {
		addrs := make([]string, len(rel.Addrs))
		for i, a := range rel.Addrs {
			addrs[i] = a.String()
		}
		out.Released = append(out.Released, api.PodReleased{
			ContainerID: rel.ContainerID, IfName: rel.IfName,
			PodNamespace: rel.Namespace, PodName: rel.Name, Addresses: addrs,
		})
		s.log.Info("pod IP garbage-collected", "attachment", rel.Attachment.String(), "pod", rel.Namespace+"/"+rel.Name, "ips", rel.Addrs)
	}
	api.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st := &api.PodNetStatus{Ready: true}
	if p := networkProblem(s.net.PodNetwork()); p != "" {
		st.Ready, st.Reason = false, p
	} else if err := s.ipam.Ready(r.Context()); err != nil {
		st.Ready, st.Reason = false, err.Error()
	}
	api.WriteJSON(w, http.StatusOK, st)
}
