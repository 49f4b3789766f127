package proxy

import (
	"context"
	"errors"
	"io"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// Multi runs several backends as one, e.g. an IPv4 and an IPv6 iptables backend on a
// dual-stack node: every call goes to each of them in order. It must hold at least one.
type Multi []Backend

var _ Backend = Multi(nil)

// Name is the first backend's name (they are one mode).
func (m Multi) Name() string { return m[0].Name() }

// Sync syncs every backend, even after one failed; it fails when any failed, so the sync loop
// retries the whole (as a full sync).
func (m Multi) Sync(ctx context.Context, st *model.State, changes model.Changes, full bool) (SyncResult, error) {
	var sum SyncResult
	var errs []error
	for _, b := range m {
		r, err := b.Sync(ctx, st, changes, full)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sum.Full = sum.Full || r.Full
		sum.ServicesWritten = max(sum.ServicesWritten, r.ServicesWritten)
		sum.Objects += r.Objects
	}
	return sum, errors.Join(errs...)
}

// Verify reports intact only when every backend is.
func (m Multi) Verify(ctx context.Context) (bool, error) {
	intact := true
	var errs []error
	for _, b := range m {
		ok, err := b.Verify(ctx)
		if err != nil {
			errs = append(errs, err)
		}
		intact = intact && ok
	}
	return intact, errors.Join(errs...)
}

// Cleanup cleans every backend up.
func (m Multi) Cleanup(ctx context.Context) error {
	var errs []error
	for _, b := range m {
		errs = append(errs, b.Cleanup(ctx))
	}
	return errors.Join(errs...)
}

// Close closes the backends that hold resources (io.Closer).
func (m Multi) Close() error {
	var errs []error
	for _, b := range m {
		if c, ok := b.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
