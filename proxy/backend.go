// Package proxy defines what every data-path backend (iptables, eBPF) implements, so the sync
// loop, the daemon and the tests drive any of them the same way. The model lives in
// proxy/model, the backends in sub-packages.
package proxy

import (
	"context"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Backend programs a model.State into the kernel. Implementations keep the rendering of rules
// (pure, tested without root) apart from the thin code that writes them.
type Backend interface {
	// Name is the mode's name: "iptables" or "ebpf".
	Name() string
	// Sync makes the kernel match st. changes says what differs from the state of the last
	// Sync that succeeded; when full is true (first sync, after an error, periodic resync,
	// tampering detected) everything is rewritten regardless of changes. Sync fails when the
	// kernel refuses the write; the previously programmed state then stays in place as far as
	// the kernel's atomicity allows (iptables-restore: per table).
	Sync(ctx context.Context, st *model.State, changes model.Changes, full bool) (SyncResult, error)
	// Verify reports whether what the backend programmed is still in place (for example the
	// canary chain still exists). It fails only when the kernel cannot be read.
	Verify(ctx context.Context) (intact bool, err error)
	// Cleanup removes every rule, program, map, route and interface the backend made. It is
	// safe to call when nothing was made, and fails only when the kernel refuses a removal.
	Cleanup(ctx context.Context) error
}

// SyncResult describes one sync, for metrics and logs.
type SyncResult struct {
	Full bool
	// ServicesWritten counts the services whose rules or map entries were rewritten.
	ServicesWritten int
	// Objects counts rules (iptables) or map entries (eBPF) written.
	Objects int
}
