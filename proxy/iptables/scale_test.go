package iptables

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// BenchmarkScaleInNetns measures real syncs in a namespace of its own (figures only, never a
// verdict on time): `go test -run '^$' -bench ScaleInNetns ./proxy/iptables/`, with
// SVCPROXY_IPT_SCALE=<services>[,<flavour>] to choose the size (default 1000,legacy), e.g.
// SVCPROXY_IPT_SCALE=10000,nft.
func BenchmarkScaleInNetns(t *testing.B) {
	spec := os.Getenv("SVCPROXY_IPT_SCALE")
	if spec == "" {
		spec = "1000,legacy"
	}
	n, flavour, _ := strings.Cut(spec, ",")
	services, err := strconv.Atoi(n)
	if err != nil {
		t.Fatalf("SVCPROXY_IPT_SCALE=%q: %v", spec, err)
	}
	if flavour == "" {
		flavour = "legacy"
	}
	r := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, err := New(ctx, Options{Backend: flavour, Runner: r, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	st := bigState(services, 10)
	start := time.Now()
	res, err := b.Sync(ctx, st, model.Diff(nil, st), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: full sync of %d services x 10 endpoints: %d rules in %v", flavour, services, res.Objects, time.Since(start))
	for i := range 3 {
		next := cloneState(st)
		s := next.Services[(i+1)*services/4]
		s.Ports[0].Endpoints = s.Ports[0].Endpoints[1:]
		start = time.Now()
		res, err = b.Sync(ctx, next, model.Diff(st, next), false)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: partial sync (one endpoint removed): %d rules in %v", flavour, res.Objects, time.Since(start))
		st = next
	}
	start = time.Now()
	if _, err := b.Sync(ctx, st, model.Changes{}, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: periodic full resync: %v", flavour, time.Since(start))
	start = time.Now()
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: cleanup: %v", flavour, time.Since(start))
}
