package proxy

import (
	"context"
	"errors"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/model"
)

type fake struct {
	name    string
	fail    bool
	intact  bool
	syncs   int
	cleaned bool
	closed  bool
}

func (f *fake) Name() string { return f.name }
func (f *fake) Sync(context.Context, *model.State, model.Changes, bool) (SyncResult, error) {
	f.syncs++
	if f.fail {
		return SyncResult{}, errors.New(f.name + " refused")
	}
	return SyncResult{ServicesWritten: 2, Objects: 10}, nil
}
func (f *fake) Verify(context.Context) (bool, error) { return f.intact, nil }
func (f *fake) Cleanup(context.Context) error        { f.cleaned = true; return nil }
func (f *fake) Close() error                         { f.closed = true; return nil }

func TestMulti(t *testing.T) {
	v4, v6 := &fake{name: "iptables", intact: true}, &fake{name: "iptables", intact: true}
	m := Multi{v4, v6}
	ctx := context.Background()
	r, err := m.Sync(ctx, &model.State{}, model.Changes{}, true)
	if err != nil || r.Objects != 20 || r.ServicesWritten != 2 || m.Name() != "iptables" {
		t.Fatalf("sync: %+v %v", r, err)
	}
	v4.fail = true
	if _, err := m.Sync(ctx, &model.State{}, model.Changes{}, false); err == nil {
		t.Fatal("one family refused: the sync must fail")
	}
	if v6.syncs != 2 {
		t.Errorf("a failure of one backend must not skip the others: v6 synced %d times", v6.syncs)
	}
	if ok, _ := m.Verify(ctx); !ok {
		t.Error("both intact")
	}
	v6.intact = false
	if ok, _ := m.Verify(ctx); ok {
		t.Error("one tampered backend makes the whole not intact")
	}
	if err := m.Cleanup(ctx); err != nil || !v4.cleaned || !v6.cleaned {
		t.Errorf("cleanup: %v %v %v", err, v4.cleaned, v6.cleaned)
	}
	if err := m.Close(); err != nil || !v4.closed || !v6.closed {
		t.Errorf("close: %v", err)
	}
}
