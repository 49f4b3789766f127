// Package routes programs host-gw routing: a route to each other node's pod range via that
// node's underlay address, so endpoints on other nodes are reachable without an overlay. The
// routes carry svcproxy's own route protocol number, so they are told apart from everyone
// else's and cleanup removes exactly them.
package routes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Protocol marks svcproxy's routes (see /etc/iproute2/rt_protos: 152 is unassigned).
const Protocol netlink.RouteProtocol = 152

// Route is one desired route.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

func (r Route) String() string { return r.Dst.String() + " via " + r.Via.String() }

// Desired returns the routes for every other node's pod ranges, skipping this node and nodes
// without an address.
func Desired(st *model.State) []Route {
	var out []Route
	for _, n := range st.Nodes {
		if n.Name == st.NodeName || !n.Address.IsValid() {
			continue
		}
		for _, p := range n.PodCIDRs {
			if p.Addr().Is4() == n.Address.Is4() {
				out = append(out, Route{Dst: p.Masked(), Via: n.Address})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dst.String() < out[j].Dst.String() })
	return out
}

// Plan compares desired routes with the ones we own now and says what to add (or replace) and
// delete.
func Plan(desired, current []Route) (add, del []Route) {
	have := map[netip.Prefix]netip.Addr{}
	for _, r := range current {
		have[r.Dst] = r.Via
	}
	want := map[netip.Prefix]bool{}
	for _, r := range desired {
		want[r.Dst] = true
		if via, ok := have[r.Dst]; !ok || via != r.Via {
			add = append(add, r)
		}
	}
	for _, r := range current {
		if !want[r.Dst] {
			del = append(del, r)
		}
	}
	return add, del
}

// Manager applies routes through a netlink handle (the current network namespace).
type Manager struct {
	h *netlink.Handle
}

// New returns a manager for the current network namespace.
func New() (*Manager, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return &Manager{h: h}, nil
}

// Close releases the netlink handle.
func (m *Manager) Close() { m.h.Close() }

// Current lists the routes svcproxy owns.
func (m *Manager) Current(ctx context.Context) ([]Route, error) {
	var out []Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := m.h.RouteListFiltered(fam, &netlink.Route{Protocol: Protocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return nil, fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range rs {
			if r.Dst == nil || r.Gw == nil {
				continue
			}
			dst, ok1 := netip.AddrFromSlice(r.Dst.IP)
			via, ok2 := netip.AddrFromSlice(r.Gw)
			ones, _ := r.Dst.Mask.Size()
			if ok1 && ok2 {
				out = append(out, Route{Dst: netip.PrefixFrom(dst.Unmap(), ones), Via: via.Unmap()})
			}
		}
	}
	return out, nil
}

// Sync makes the owned routes equal desired. It returns the number of routes changed.
func (m *Manager) Sync(ctx context.Context, desired []Route) (int, error) {
	cur, err := m.Current(ctx)
	if err != nil {
		return 0, err
	}
	add, del := Plan(desired, cur)
	var errs []error
	for _, r := range del {
		if err := m.h.RouteDel(toNetlink(r)); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route %s: %w", r, err))
		}
	}
	for _, r := range add {
		if err := m.h.RouteReplace(toNetlink(r)); err != nil {
			errs = append(errs, fmt.Errorf("adding route %s (is %s on a directly connected network?): %w", r, r.Via, err))
		}
	}
	return len(add) + len(del), errors.Join(errs...)
}

// Cleanup deletes every route svcproxy owns.
func (m *Manager) Cleanup(ctx context.Context) error {
	_, err := m.Sync(ctx, nil)
	return err
}

func toNetlink(r Route) *netlink.Route {
	bits := 32
	if r.Dst.Addr().Is6() {
		bits = 128
	}
	return &netlink.Route{
		Dst:      &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), bits)},
		Gw:       r.Via.AsSlice(),
		Protocol: Protocol,
	}
}

// NewIn returns a manager for the network namespace ns.
func NewIn(ns netns.NsHandle) (*Manager, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace: %w", err)
	}
	return &Manager{h: h}, nil
}
