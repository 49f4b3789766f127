// Package configcheck holds only a compile-time test that *ipam.ServiceAllocator implements
// config.Allocator; package ipam itself does not import config.
package configcheck
