// Package podadapter adapts an *ipam.PodAllocator to podserver.PodIPAM, the interface of the
// daemon's pod API handlers: it converts the types and makes ipam's errors match podserver's
// (errors.Is(err, podserver.ErrExhausted), errors.Is(err, podserver.ErrNotFound)) while
// keeping ipam's messages, which name the range and the owner.
package podadapter

import (
	"context"
	"errors"
	"net/netip"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/ipam"
)

// Adapter is a podserver.PodIPAM over an ipam.PodAllocator.
type Adapter struct{ A *ipam.PodAllocator }

var _ podserver.PodIPAM = Adapter{}

// New returns the adapter of a.
func New(a *ipam.PodAllocator) Adapter { return Adapter{A: a} }

// Allocate implements podserver.PodIPAM: the pod's addresses, one per address family.
func (d Adapter) Allocate(ctx context.Context, p podserver.Pod) ([]netip.Addr, error) {
	al, err := d.A.AllocatePod(ctx, ipam.PodOwner{ContainerID: p.ContainerID, IfName: p.IfName,
		Namespace: p.Namespace, Name: p.Name, UID: p.UID, Labels: p.Labels})
	if err != nil {
		return nil, mapErr(err)
	}
	return addrs(al.IPs), nil
}

// Release implements podserver.PodIPAM; an unknown attachment is a success.
func (d Adapter) Release(ctx context.Context, a podserver.Attachment) error {
	_, err := d.A.ReleasePod(ctx, a.ContainerID, a.IfName)
	return mapErr(err)
}

// Check implements podserver.PodIPAM.
func (d Adapter) Check(ctx context.Context, a podserver.Attachment) ([]netip.Addr, error) {
	al, err := d.A.CheckPod(ctx, a.ContainerID, a.IfName)
	if err != nil {
		return nil, mapErr(err)
	}
	return addrs(al.IPs), nil
}

// GC implements podserver.PodIPAM: ipam's CNI GC (grace period, cap per call, an empty list
// refused with an error matching podserver.ErrGCRefused).
func (d Adapter) GC(ctx context.Context, valid []podserver.Attachment) ([]podserver.Released, error) {
	v := make([]ipam.Attachment, len(valid))
	for i, a := range valid {
		v[i] = ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}
	}
	freed, err := d.A.GC(ctx, v)
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]podserver.Released, len(freed))
	for i, f := range freed {
		out[i] = podserver.Released{
			Attachment: podserver.Attachment{ContainerID: f.Owner.ContainerID, IfName: f.Owner.IfName},
			Namespace:  f.Owner.Namespace, Name: f.Owner.Name, Addrs: addrs(f.IPs),
		}
	}
	return out, nil
}

// Ready implements podserver.PodIPAM: nil while every address family has a free address.
func (d Adapter) Ready(ctx context.Context) error { return mapErr(d.A.Available(ctx)) }

// Ranges returns the allocator's ranges with their gateways, for podserver.Network.
func (d Adapter) Ranges() []podserver.Range {
	gws := d.A.Gateways()
	out := make([]podserver.Range, len(gws))
	for i, g := range gws {
		out[i] = podserver.Range{Prefix: g.Masked(), Gateway: g.Addr()}
	}
	return out
}

func addrs(ips []ipam.PodIP) []netip.Addr {
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = ip.Address.Addr()
	}
	return out
}

// mapped keeps ipam's error (and message) and also matches podserver's sentinel.
type mapped struct {
	err error
	is  error
}

func (m mapped) Error() string        { return m.err.Error() }
func (m mapped) Unwrap() []error      { return []error{m.err, m.is} }
func (m mapped) Is(target error) bool { return target == m.is }

func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ipam.ErrExhausted):
		return mapped{err, podserver.ErrExhausted}
	case errors.Is(err, ipam.ErrNotFound):
		return mapped{err, podserver.ErrNotFound}
	case errors.Is(err, ipam.ErrGCRefused):
		return mapped{err, podserver.ErrGCRefused}
	}
	return err
}
