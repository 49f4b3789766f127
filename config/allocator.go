package config

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Allocator hands out what a config file leaves unset (VIPs, node ports, health-check node
// ports) and reserves what it sets explicitly, so that nothing is handed to two owners. The
// daemon backs it with package ipam (persistent); tests use NewMemAllocator.
type Allocator interface {
	// ServiceIP returns the VIP of service key in cidr: want when it is valid (reserving it; an
	// error naming the owner when another service holds it), else the VIP the service already
	// has, else a newly allocated one (upper band first).
	ServiceIP(key model.ServiceKey, cidr netip.Prefix, want netip.Addr) (netip.Addr, error)
	// NodePort returns the node port of port key: want when non-zero (reserved; an error naming
	// the owner when taken), else the one it already has, else a new one.
	NodePort(key model.PortKey, want uint16) (uint16, error)
	// HealthCheckNodePort is NodePort for a service's health-check node port.
	HealthCheckNodePort(key model.ServiceKey, want uint16) (uint16, error)
	// Retain tells the allocator which services the newest good config holds; the VIPs and
	// ports of every other service are released after the allocator's grace period.
	Retain(services []model.ServiceKey)
}
