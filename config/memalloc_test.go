package config

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

func key(n string) model.ServiceKey { return model.ServiceKey{Namespace: "default", Name: n} }

func TestMemAllocatorServiceIPBands(t *testing.T) {
	a := NewMemAllocator()
	cidr := netip.MustParsePrefix("10.96.0.0/24") // 254 usable, offset max(16, 254/16=15) = 16
	got, err := a.ServiceIP(key("a"), cidr, netip.Addr{})
	if err != nil || got != netip.MustParseAddr("10.96.0.17") {
		t.Fatalf("first dynamic VIP = %v, %v; want 10.96.0.17 (upper band)", got, err)
	}
	// Stable per owner.
	if again, _ := a.ServiceIP(key("a"), cidr, netip.Addr{}); again != got {
		t.Errorf("second call = %v, want %v", again, got)
	}
	// Explicit requests: in the lower band, free; refused with the owner when held.
	if ip, err := a.ServiceIP(key("b"), cidr, netip.MustParseAddr("10.96.0.10")); err != nil || ip != netip.MustParseAddr("10.96.0.10") {
		t.Errorf("explicit = %v, %v", ip, err)
	}
	_, err = a.ServiceIP(key("c"), cidr, got)
	if err == nil || !strings.Contains(err.Error(), "default/a") {
		t.Errorf("conflict error = %v; want one naming default/a", err)
	}
	// Network and broadcast addresses and addresses outside the range are refused.
	for _, s := range []string{"10.96.0.0", "10.96.0.255", "10.97.0.1"} {
		if _, err := a.ServiceIP(key("d"), cidr, netip.MustParseAddr(s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	// Fill the upper band: the next dynamic VIP comes from the lower band.
	for i := 0; i < 254-16-1; i++ {
		if _, err := a.ServiceIP(key("fill"+string(rune('a'+i%26))+strings.Repeat("x", i/26)), cidr, netip.Addr{}); err != nil {
			t.Fatalf("fill %d: %v", i, err)
		}
	}
	low, err := a.ServiceIP(key("low"), cidr, netip.Addr{})
	if err != nil || low != netip.MustParseAddr("10.96.0.1") {
		t.Errorf("after the upper band is full: %v, %v; want 10.96.0.1", low, err)
	}
	// Retain releases the rest at once.
	a.Retain([]model.ServiceKey{key("a")})
	if ip, err := a.ServiceIP(key("c"), cidr, netip.MustParseAddr("10.96.0.10")); err != nil || ip.String() != "10.96.0.10" {
		t.Errorf("after Retain: %v, %v", ip, err)
	}
	if ip, _ := a.ServiceIP(key("a"), cidr, netip.Addr{}); ip != got {
		t.Errorf("retained service lost its VIP: %v", ip)
	}
}

func TestMemAllocatorIPv6AndLargeRanges(t *testing.T) {
	a := NewMemAllocator()
	cidr := netip.MustParsePrefix("fd00:96::/64") // huge: offset capped at 256
	got, err := a.ServiceIP(key("a"), cidr, netip.Addr{})
	if err != nil || got != netip.MustParseAddr("fd00:96::101") {
		t.Errorf("IPv6 dynamic VIP = %v, %v; want fd00:96::101", got, err)
	}
	// The last address of an IPv6 range is usable (no broadcast).
	if _, err := a.ServiceIP(key("b"), cidr, netip.MustParseAddr("fd00:96::ffff:ffff:ffff:ffff")); err != nil {
		t.Errorf("last IPv6 address refused: %v", err)
	}
	// A tiny range has no bands.
	tiny := netip.MustParsePrefix("10.0.0.0/29")
	if ip, err := a.ServiceIP(key("c"), tiny, netip.Addr{}); err != nil || ip.String() != "10.0.0.1" {
		t.Errorf("tiny range = %v, %v", ip, err)
	}
}

func TestMemAllocatorNodePorts(t *testing.T) {
	a := NewMemAllocator(WithNodePortRange(PortRange{Min: 30000, Max: 30099})) // size 100: offset 16
	pk := func(svc, port string, p model.Protocol) model.PortKey {
		return model.PortKey{Service: key(svc), Port: port, Protocol: p}
	}
	got, err := a.NodePort(pk("a", "http", model.TCP), 0)
	if err != nil || got != 30016 {
		t.Fatalf("dynamic node port = %d, %v; want 30016", got, err)
	}
	if again, _ := a.NodePort(pk("a", "http", model.TCP), 0); again != got {
		t.Errorf("not stable: %d", again)
	}
	// Two ports of one service may share a node port; another service may not.
	if _, err := a.NodePort(pk("dns", "udp", model.UDP), 30053); err != nil {
		t.Fatal(err)
	}
	if _, err := a.NodePort(pk("dns", "tcp", model.TCP), 30053); err != nil {
		t.Errorf("same service sharing a node port: %v", err)
	}
	if _, err := a.NodePort(pk("other", "", model.TCP), 30053); err == nil || !strings.Contains(err.Error(), "default/dns") {
		t.Errorf("conflict error = %v", err)
	}
	if _, err := a.HealthCheckNodePort(key("other"), 30016); err == nil || !strings.Contains(err.Error(), "default/a") {
		t.Errorf("health-check conflict error = %v", err)
	}
	if _, err := a.NodePort(pk("x", "", model.TCP), 31000); err == nil {
		t.Error("port outside the range accepted")
	}
	hc, err := a.HealthCheckNodePort(key("lb"), 0)
	if err != nil || hc != 30017 {
		t.Errorf("health-check node port = %d, %v", hc, err)
	}
	// Changing an explicit port frees the old one.
	if _, err := a.NodePort(pk("a", "http", model.TCP), 30001); err != nil {
		t.Fatal(err)
	}
	if _, err := a.NodePort(pk("b", "", model.TCP), 30016); err != nil {
		t.Errorf("old port of a not freed: %v", err)
	}
	// Retain drops every user of a removed service.
	a.Retain([]model.ServiceKey{key("a")})
	if _, err := a.NodePort(pk("other", "", model.TCP), 30053); err != nil {
		t.Errorf("after Retain: %v", err)
	}
	// Exhaustion is an error.
	small := NewMemAllocator(WithNodePortRange(PortRange{Min: 30000, Max: 30001}))
	small.NodePort(pk("p", "1", model.TCP), 0)
	small.NodePort(pk("p", "2", model.TCP), 0)
	if _, err := small.NodePort(pk("p", "3", model.TCP), 0); err == nil || !strings.Contains(err.Error(), "full") {
		t.Errorf("full range: %v", err)
	}
}
