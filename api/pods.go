package api

import (
	"context"
	"errors"
	"net/http"
)

// Paths of the pod API, used by svcproxy-cni.
const (
	PathPodsAllocate = "/v1/pods/allocate"
	PathPodsRelease  = "/v1/pods/release"
	PathPodsCheck    = "/v1/pods/check"
	PathPodsGC       = "/v1/pods/gc"
	PathPodsStatus   = "/v1/pods/status"
)

// CNI error codes carried in Error.Code by the pod API (CNI spec 1.1, "Error").
const (
	// CodeInvalidEnv: a required identity field (containerID, ifName) is missing or malformed;
	// the plugin got it from CNI_CONTAINERID / CNI_IFNAME.
	CodeInvalidEnv = 4
	// CodeIOFailure: the daemon failed to read or write its state.
	CodeIOFailure = 5
	// CodeDecodeFailure: the request body is not valid JSON of the expected shape.
	CodeDecodeFailure = 6
	// CodeInvalidConfig: a request field other than the identity is invalid (e.g. a label).
	CodeInvalidConfig = 7
	// CodeTryAgainLater: the daemon cannot answer now (e.g. unreachable); retry later.
	CodeTryAgainLater = 11
	// CodeNotAvailable: the pod network cannot serve ADD (range full, daemon down).
	CodeNotAvailable = 50
	// CodeNoAllocation (plugin specific): the attachment has no allocation (CHECK).
	CodeNoAllocation = 100
)

// PodAttachment names one interface of one container: the unit of allocation.
type PodAttachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// PodAllocateRequest asks for the addresses of an attachment. Allocation is idempotent per
// (ContainerID, IfName): asking again returns the same addresses.
type PodAllocateRequest struct {
	ContainerID  string `json:"containerID"`
	IfName       string `json:"ifName"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	// PodUID is the pod's UID when the runtime passes it (CNI_ARGS K8S_POD_UID).
	PodUID string            `json:"podUID,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Netns is the pod's network namespace path, for the record.
	Netns string `json:"netns,omitempty"`
}

// Attachment returns the attachment the request is for.
func (r *PodAllocateRequest) Attachment() PodAttachment {
	return PodAttachment{ContainerID: r.ContainerID, IfName: r.IfName}
}

// PodIP is one address of a pod with the gateway of its family.
type PodIP struct {
	// Address in CIDR form with the pod range's prefix length, e.g. "10.244.1.5/24".
	Address string `json:"address"`
	// Gateway is the node bridge's address in that range, e.g. "10.244.1.1".
	Gateway string `json:"gateway"`
}

// PodAllocation is what a pod gets: its addresses (one per family) and the node bridge to
// attach it to.
type PodAllocation struct {
	IPs    []PodIP `json:"ips"`
	Bridge string  `json:"bridge"`
	// MTU of the pod's interface and the bridge; 0 means the kernel default.
	MTU int `json:"mtu,omitempty"`
}

// PodGCRequest lists every attachment still in use; the daemon frees every other allocation.
type PodGCRequest struct {
	ValidAttachments []PodAttachment `json:"validAttachments"`
}

// PodReleased is one allocation freed by GC.
type PodReleased struct {
	ContainerID  string   `json:"containerID"`
	IfName       string   `json:"ifName"`
	PodNamespace string   `json:"podNamespace,omitempty"`
	PodName      string   `json:"podName,omitempty"`
	Addresses    []string `json:"addresses"`
}

// PodGCResult is what GC freed.
type PodGCResult struct {
	Released []PodReleased `json:"released"`
}

// PodNetStatus says whether the pod network can serve ADD.
type PodNetStatus struct {
	Ready bool `json:"ready"`
	// Reason says why not, e.g. "no free pod IP left in pod range 10.244.1.0/24".
	Reason string `json:"reason,omitempty"`
}

// AllocatePod returns the addresses of the attachment in req, allocating them on the first
// call. It fails with an *Error (Code CodeNotAvailable when the range is full) or an error
// wrapping ErrUnreachable.
func (c *Client) AllocatePod(ctx context.Context, req *PodAllocateRequest) (*PodAllocation, error) {
	out := &PodAllocation{}
	if err := c.Do(ctx, http.MethodPost, PathPodsAllocate, req, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ReleasePod frees the addresses of an attachment; releasing an unknown attachment succeeds.
func (c *Client) ReleasePod(ctx context.Context, a PodAttachment) error {
	return c.Do(ctx, http.MethodPost, PathPodsRelease, &a, nil)
}

// CheckPod returns the current allocation of an attachment. It fails with an *Error with
// Code CodeNoAllocation (HTTP 404) when the attachment has none.
func (c *Client) CheckPod(ctx context.Context, a PodAttachment) (*PodAllocation, error) {
	out := &PodAllocation{}
	if err := c.Do(ctx, http.MethodPost, PathPodsCheck, &a, out); err != nil {
		return nil, err
	}
	return out, nil
}

// GCPods frees every allocation whose attachment is not in valid and returns what it freed.
func (c *Client) GCPods(ctx context.Context, valid []PodAttachment) (*PodGCResult, error) {
	if valid == nil {
		valid = []PodAttachment{}
	}
	out := &PodGCResult{}
	if err := c.Do(ctx, http.MethodPost, PathPodsGC, &PodGCRequest{ValidAttachments: valid}, out); err != nil {
		return nil, err
	}
	return out, nil
}

// PodStatus asks whether the pod network can serve ADD. A daemon that answers gives a
// status (Ready false with a Reason when the range is full); an unreachable one an error
// wrapping ErrUnreachable.
func (c *Client) PodStatus(ctx context.Context) (*PodNetStatus, error) {
	out := &PodNetStatus{}
	if err := c.Do(ctx, http.MethodGet, PathPodsStatus, nil, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ErrorCode returns the CNI code of an API error: Error.Code for an *Error, CodeTryAgainLater
// for an unreachable daemon, and 0 otherwise.
func ErrorCode(err error) int {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, ErrUnreachable):
		return CodeTryAgainLater
	}
	return 0
}
