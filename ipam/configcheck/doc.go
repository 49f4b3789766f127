// Package configcheck holds only tests of package ipam together with package config: that
// *ipam.ServiceAllocator implements config.Allocator, and that config.BuildState over the
// persistent allocator keeps VIPs and node ports across reloads and restarts. Package ipam
// itself does not import config, so that each builds and tests on its own.
package configcheck
