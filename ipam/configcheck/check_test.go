package configcheck

import (
	"testing"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam"
)

var _ config.Allocator = (*ipam.ServiceAllocator)(nil)

func TestServiceAllocatorIsConfigAllocator(t *testing.T) {
	var a config.Allocator = (*ipam.ServiceAllocator)(nil)
	if a == nil {
		t.Fatal("nil interface")
	}
}
