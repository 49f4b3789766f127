package cni

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The functions here change the kernel: the node side in the caller's network namespace, the
// pod side in the namespace they are given.

func ifaceOf(l netlink.Link, sandbox string) Iface {
	return Iface{Name: l.Attrs().Name, Mac: l.Attrs().HardwareAddr.String(), Sandbox: sandbox}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, ip.ErrLinkNotFound)
}

// EnsureBridge returns the node bridge name, creating it (with a fixed random MAC address, so
// it does not change as ports come and go, and the MTU when mtu > 0) when missing, adding each
// gateway address it lacks and bringing it up. It fails when a link of that name exists but is
// not a bridge.
func EnsureBridge(name string, mtu int, gateways []netip.Prefix) (Iface, error) {
	br, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if mtu > 0 {
			attrs.MTU = mtu
		}
		mac := make(net.HardwareAddr, 6)
		if _, err := rand.Read(mac); err != nil {
			return Iface{}, fmt.Errorf("bridge %s: MAC address: %w", name, err)
		}
		mac[0] = mac[0]&^0x01 | 0x02 // unicast, locally administered
		attrs.HardwareAddr = mac
		err = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: a concurrent ADD made it
			return Iface{}, fmt.Errorf("creating bridge %s: %w", name, err)
		}
		br, err = netlinksafe.LinkByName(name)
	}
	if err != nil {
		return Iface{}, fmt.Errorf("looking up bridge %s: %w", name, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return Iface{}, fmt.Errorf("link %s exists but is a %s, not a bridge", name, br.Type())
	}
	have, err := netlinksafe.AddrList(br, netlink.FAMILY_ALL)
	if err != nil {
		return Iface{}, fmt.Errorf("listing addresses of bridge %s: %w", name, err)
	}
	for _, gw := range gateways {
		if slices.ContainsFunc(have, func(a netlink.Addr) bool { return prefixOf(a.IPNet) == gw }) {
			continue
		}
		addr := &netlink.Addr{IPNet: ipNet(gw)}
		if gw.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // the gateway must answer at once
		}
		if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return Iface{}, fmt.Errorf("adding gateway address %s to bridge %s: %w", gw, name, err)
		}
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return Iface{}, fmt.Errorf("bringing bridge %s up: %w", name, err)
		}
	}
	return ifaceOf(br, ""), nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits)
}

// CreateVeth makes the veth pair of an attachment: ifName in the pod's namespace podNS and
// hostVeth in the caller's, attached to bridge with hairpin mode on; the pod end gets podMAC
// (nil: a random one). A stale hostVeth of an
// earlier attempt is deleted first. It fails when ifName already exists in podNS.
func CreateVeth(podNS ns.NetNS, ifName, hostVeth string, mtu int, bridge string, podMAC net.HardwareAddr) (host, cont Iface, err error) {
	if err := deleteLink(hostVeth); err != nil {
		return Iface{}, Iface{}, fmt.Errorf("deleting stale host veth %s: %w", hostVeth, err)
	}
	br, err := netlinksafe.LinkByName(bridge)
	if err != nil {
		return Iface{}, Iface{}, fmt.Errorf("looking up bridge %s: %w", bridge, err)
	}
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return Iface{}, Iface{}, fmt.Errorf("opening the node's network namespace: %w", err)
	}
	defer hostNS.Close()
	err = podNS.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(ifName); err == nil {
			return fmt.Errorf("interface %s already exists in %s", ifName, podNS.Path())
		}
		mac := ""
		if podMAC != nil {
			mac = podMAC.String()
		}
		_, c, err := ip.SetupVethWithName(ifName, hostVeth, mtu, mac, hostNS)
		if err != nil {
			return fmt.Errorf("creating veth pair %s/%s: %w", hostVeth, ifName, err)
		}
		cont = Iface{Name: c.Name, Mac: c.HardwareAddr.String(), Sandbox: podNS.Path()}
		return nil
	})
	if err != nil {
		return Iface{}, Iface{}, err
	}
	hl, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return Iface{}, Iface{}, fmt.Errorf("looking up host veth %s: %w", hostVeth, err)
	}
	if err := netlink.LinkSetMaster(hl, br); err != nil {
		return Iface{}, Iface{}, fmt.Errorf("attaching %s to bridge %s: %w", hostVeth, bridge, err)
	}
	if err := netlink.LinkSetHairpin(hl, true); err != nil {
		return Iface{}, Iface{}, fmt.Errorf("hairpin mode on %s: %w", hostVeth, err)
	}
	return ifaceOf(hl, ""), cont, nil
}

// ConfigurePod assigns the addresses of res to ifName in podNS, brings it up and adds the
// routes of res.
func ConfigurePod(podNS ns.NetNS, ifName string, res *current.Result) error {
	return podNS.Do(func(ns.NetNS) error {
		if err := ipam.ConfigureIface(ifName, res); err != nil {
			return fmt.Errorf("configuring %s in %s: %w", ifName, podNS.Path(), err)
		}
		return nil
	})
}

func deleteLink(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return err
	}
	return nil
}

// Teardown removes an attachment's veth pair: ifName in the namespace at netnsPath (a missing
// namespace or interface is fine) and hostVeth in the caller's namespace if it is left.
func Teardown(netnsPath, ifName, hostVeth string) error {
	if netnsPath != "" {
		err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error { return deleteLink(ifName) })
		var notExist ns.NSPathNotExistErr
		if err != nil && !errors.As(err, &notExist) && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("deleting %s in %s: %w", ifName, netnsPath, err)
		}
	}
	if err := deleteLink(hostVeth); err != nil {
		return fmt.Errorf("deleting host veth %s: %w", hostVeth, err)
	}
	return nil
}

// Verify checks that the kernel holds what res describes: hostVeth exists and is a port of
// bridge, and in the namespace at netnsPath ifName is an up veth whose peer is hostVeth, with
// every address of res and every route of res through its gateway.
func Verify(netnsPath, ifName, hostVeth, bridge string, res *current.Result) error {
	br, err := netlinksafe.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	hl, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", hostVeth, err)
	}
	if hl.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not a port of bridge %s", hostVeth, bridge)
	}
	return ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", ifName, netnsPath, err)
		}
		veth, ok := l.(*netlink.Veth)
		if !ok {
			return fmt.Errorf("%s in %s is a %s, not a veth", ifName, netnsPath, l.Type())
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s in %s is down", ifName, netnsPath)
		}
		peer, err := netlink.VethPeerIndex(veth)
		if err != nil {
			return fmt.Errorf("peer of %s in %s: %w", ifName, netnsPath, err)
		}
		if peer != hl.Attrs().Index {
			return fmt.Errorf("%s in %s is not the peer of host veth %s", ifName, netnsPath, hostVeth)
		}
		if err := verifyAddrsRoutes(l, res); err != nil {
			return fmt.Errorf("in %s: %w", netnsPath, err)
		}
		return nil
	})
}

// verifyAddrsRoutes checks that link l carries every address of res and that every route of
// res goes out of l through its gateway.
func verifyAddrsRoutes(l netlink.Link, res *current.Result) error {
	name := l.Attrs().Name
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", name, err)
	}
	for _, want := range res.IPs {
		p := prefixOf(&want.Address)
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return prefixOf(a.IPNet) == p }) {
			return fmt.Errorf("%s lacks address %s", name, p)
		}
	}
	for _, want := range res.Routes {
		dst := prefixOf(&want.Dst)
		family, unspec := netlink.FAMILY_V4, netip.IPv4Unspecified()
		if dst.Addr().Is6() {
			family, unspec = netlink.FAMILY_V6, netip.IPv6Unspecified()
		}
		routes, err := netlinksafe.RouteList(l, family)
		if err != nil {
			return fmt.Errorf("listing routes of %s: %w", name, err)
		}
		found := slices.ContainsFunc(routes, func(r netlink.Route) bool {
			rdst := netip.PrefixFrom(unspec, 0)
			if r.Dst != nil {
				rdst = prefixOf(r.Dst)
			}
			return rdst == dst && (want.GW == nil || want.GW.Equal(r.Gw))
		})
		if !found {
			return fmt.Errorf("%s has no route to %s via %v", name, dst, want.GW)
		}
	}
	return nil
}

// linkExistsIn reports whether podNS holds a link named name.
func linkExistsIn(podNS ns.NetNS, name string) (bool, error) {
	exists := false
	err := podNS.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(name)
		switch {
		case err == nil:
			exists = true
		case !isNotFound(err):
			return fmt.Errorf("looking up %s in %s: %w", name, podNS.Path(), err)
		}
		return nil
	})
	return exists, err
}
