package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/svcproxy/svcproxy/api"
)

// IPConfig is one address of a pod and its family's gateway (the node bridge's address).
type IPConfig struct {
	Address netip.Prefix // pod address with the range's prefix length, e.g. 10.244.1.5/24
	Gateway netip.Addr
}

// Wiring is an allocation from the daemon, parsed and checked.
type Wiring struct {
	Bridge string
	MTU    int
	IPs    []IPConfig
}

// PodMAC is the pod interface's MAC address, derived from its first IPv4 address as
// 0a:58:a:b:c:d (or from the last 4 bytes of its first IPv6 address): the same IP always gets
// the same MAC, so neighbour entries that peers cached for a pod re-created with the same IP
// (same container, re-ADD after a restart) stay right instead of black-holing it until they
// expire.
func (w *Wiring) PodMAC() net.HardwareAddr {
	var b []byte
	for _, ip := range w.IPs {
		if ip.Address.Addr().Is4() {
			a := ip.Address.Addr().As4()
			b = a[:]
			break
		}
	}
	if b == nil && len(w.IPs) > 0 {
		a := w.IPs[0].Address.Addr().As16()
		b = a[12:]
	}
	if b == nil {
		return nil
	}
	return net.HardwareAddr{0x0a, 0x58, b[0], b[1], b[2], b[3]}
}

// GatewayPrefixes are the bridge's addresses: each gateway with its range's prefix length.
func (w *Wiring) GatewayPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, len(w.IPs))
	for i, ip := range w.IPs {
		out[i] = netip.PrefixFrom(ip.Gateway, ip.Address.Bits())
	}
	return out
}

// ParseAllocation checks an allocation from the daemon: a bridge name, at least one address,
// at most one per family, each with a gateway of its family inside its prefix.
func ParseAllocation(a *api.PodAllocation) (*Wiring, error) {
	if a == nil {
		return nil, errors.New("daemon answered no allocation")
	}
	if a.Bridge == "" {
		return nil, errors.New("daemon's allocation names no bridge")
	}
	if a.MTU < 0 || a.MTU > 65535 {
		return nil, fmt.Errorf("daemon's allocation has MTU %d, want 0..65535", a.MTU)
	}
	if len(a.IPs) == 0 {
		return nil, errors.New("daemon's allocation holds no address")
	}
	w := &Wiring{Bridge: a.Bridge, MTU: a.MTU}
	var seen4, seen6 bool
	for _, ip := range a.IPs {
		p, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return nil, fmt.Errorf("daemon's allocation: address %q: %w", ip.Address, err)
		}
		gw, err := netip.ParseAddr(ip.Gateway)
		if err != nil {
			return nil, fmt.Errorf("daemon's allocation: gateway %q of %s: %w", ip.Gateway, p, err)
		}
		switch {
		case gw.Is4() != p.Addr().Is4() || !p.Contains(gw):
			return nil, fmt.Errorf("daemon's allocation: gateway %s is not in %s", gw, p.Masked())
		case gw == p.Addr():
			return nil, fmt.Errorf("daemon's allocation: address %s is the gateway", p.Addr())
		case p.Addr().Is4() && seen4, p.Addr().Is6() && seen6:
			return nil, fmt.Errorf("daemon's allocation holds two addresses of one family (%s)", p)
		}
		seen4 = seen4 || p.Addr().Is4()
		seen6 = seen6 || p.Addr().Is6()
		w.IPs = append(w.IPs, IPConfig{Address: p, Gateway: gw})
	}
	return w, nil
}

// Iface is an interface of the result.
type Iface struct {
	Name    string
	Mac     string
	Sandbox string // the netns path for the pod's interface, "" on the node
}

// Indexes of the interfaces in a Result.
const (
	BridgeIndex = iota
	HostIndex
	ContainerIndex
)

// BuildResult is the CNI result of a pod: interfaces bridge, host veth and the pod's interface
// (with its sandbox), each address on the pod's interface with its gateway, and a default
// route per family through the gateway. The result is of the current spec version
// (current.ImplementedSpecVersion); convert it with GetAsVersion for older callers.
func BuildResult(w *Wiring, bridge, host, cont Iface) *current.Result {
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, i := range []Iface{bridge, host, cont} {
		res.Interfaces = append(res.Interfaces, &current.Interface{Name: i.Name, Mac: i.Mac, Sandbox: i.Sandbox})
	}
	for _, ip := range w.IPs {
		idx := ContainerIndex
		res.IPs = append(res.IPs, &current.IPConfig{
			Interface: &idx,
			Address:   net.IPNet{IP: ip.Address.Addr().AsSlice(), Mask: net.CIDRMask(ip.Address.Bits(), ip.Address.Addr().BitLen())},
			Gateway:   ip.Gateway.AsSlice(),
		})
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if ip.Address.Addr().Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		res.Routes = append(res.Routes, &types.Route{
			Dst: net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(0, dst.Addr().BitLen())},
			GW:  ip.Gateway.AsSlice(),
		})
	}
	return res
}

// SameAddresses reports an error unless prev (a previous result, e.g. CHECK's prevResult)
// holds exactly the addresses of w.
func SameAddresses(prev *current.Result, w *Wiring) error {
	want := map[netip.Prefix]bool{}
	for _, ip := range w.IPs {
		want[ip.Address] = true
	}
	got := map[netip.Prefix]bool{}
	for _, ip := range prev.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return fmt.Errorf("prevResult holds an invalid address %v", ip.Address.IP)
		}
		bits, _ := ip.Address.Mask.Size()
		got[netip.PrefixFrom(a.Unmap(), bits)] = true
	}
	for p := range want {
		if !got[p] {
			return fmt.Errorf("prevResult lacks address %s that the daemon allocated", p)
		}
	}
	for p := range got {
		if !want[p] {
			return fmt.Errorf("prevResult holds address %s that the daemon did not allocate", p)
		}
	}
	return nil
}
