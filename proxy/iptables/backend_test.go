package iptables

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/svcproxy/svcproxy/proxy/iptables/tracer"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// fakeKernel is a Runner that keeps the nat and filter tables in a tracer.Ruleset, so the
// Backend's bookkeeping is tested without root. fail makes chosen commands fail.
type fakeKernel struct {
	mu    sync.Mutex
	rs    *tracer.Ruleset
	calls []string
	fail  func(name string, args []string) error
}

func (f *fakeKernel) Run(_ context.Context, name string, args []string, stdin []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	if f.fail != nil {
		if err := f.fail(name, args); err != nil {
			return nil, err
		}
	}
	switch {
	case strings.HasSuffix(name, "-restore"):
		if err := f.rs.Restore(string(stdin)); err != nil {
			return nil, &ExitError{Cmd: name, Code: 1, Stderr: err.Error()}
		}
		return nil, nil
	case strings.HasSuffix(name, "-save"):
		if len(args) == 2 && args[0] == "-t" {
			return []byte(f.rs.DumpTables(args[1])), nil
		}
		return []byte(f.rs.Dump()), nil
	case name == "conntrack":
		return nil, &ExitError{Cmd: name, Code: 1, Stderr: "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted."}
	case strings.HasPrefix(name, "iptables"):
		// -w N -t TABLE -C|-I|-S CHAIN [rule...]
		table, op, chain := args[3], args[4], args[5]
		switch op {
		case "-S":
			if f.rs.Chain(table, chain) == nil {
				return nil, &ExitError{Cmd: name, Code: 1, Stderr: "No chain/target/match by that name."}
			}
			return nil, nil
		case "-C":
			c := f.rs.Chain(table, chain)
			want := strings.Join(quoteArgs(args[6:]), " ")
			for _, r := range c.Rules {
				if r.Text == want {
					return nil, nil
				}
			}
			return nil, &ExitError{Cmd: name, Code: 1, Stderr: "Bad rule"}
		case "-I":
			line := "*" + table + "\n-I " + chain + " " + strings.Join(quoteArgs(args[7:]), " ") + "\nCOMMIT\n"
			if err := f.rs.Restore(line); err != nil {
				return nil, &ExitError{Cmd: name, Code: 2, Stderr: err.Error()}
			}
			return nil, nil
		}
	}
	return nil, &ExitError{Cmd: name, Code: 2, Stderr: "fake: unsupported " + strings.Join(args, " ")}
}

func quoteArgs(a []string) []string {
	out := make([]string, len(a))
	for i, s := range a {
		if strings.Contains(s, " ") {
			out[i] = `"` + s + `"`
		} else {
			out[i] = s
		}
	}
	return out
}

func (f *fakeKernel) count(prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func newFake(t *testing.T) (*Backend, *fakeKernel) {
	t.Helper()
	fk := &fakeKernel{rs: tracer.New()}
	b, err := New(context.Background(), Options{Backend: "legacy", Runner: fk})
	if err != nil {
		t.Fatal(err)
	}
	return b, fk
}

func TestBackendBookkeeping(t *testing.T) {
	ctx := context.Background()
	b, fk := newFake(t)
	st := fixtureState()

	// First sync: full, reads the kernel, jumps go in with the chains (no iptables -I).
	res, err := b.Sync(ctx, st, model.Changes{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || fk.count("iptables-legacy-save") != 2 || fk.count("iptables-legacy -w") != 0 {
		t.Fatalf("first sync: full=%v calls=%q", res.Full, fk.calls)
	}
	if fk.rs.Dump() != fresh(t, st) {
		t.Fatalf("first sync differs from a fresh full render:\n%s", fk.rs.Dump())
	}
	if ok, err := b.Verify(ctx); !ok || err != nil {
		t.Fatalf("Verify: %v %v", ok, err)
	}

	// A periodic full sync checks the jumps with -C and inserts none.
	fk.calls = nil
	if _, err := b.Sync(ctx, st, model.Changes{}, true); err != nil {
		t.Fatal(err)
	}
	if fk.count("iptables-legacy -w 5 -t") != len(JumpRules()) || fk.count("iptables-legacy-save") != 0 {
		t.Fatalf("periodic full sync calls: %q", fk.calls)
	}
	if fk.rs.Dump() != fresh(t, st) {
		t.Fatal("periodic full sync changed the ruleset")
	}

	// A refused partial sync: error, and the next sync is full and reads the kernel.
	next := cloneState(st)
	next.Services = next.Services[1:]
	fk.fail = func(name string, args []string) error {
		if name == "iptables-legacy-restore" {
			return &ExitError{Cmd: name, Code: 1, Stderr: "line 3 failed"}
		}
		return nil
	}
	if _, err := b.Sync(ctx, next, model.Diff(st, next), false); err == nil || !strings.Contains(err.Error(), "refused table") {
		t.Fatalf("refused restore: %v", err)
	}
	fk.fail, fk.calls = nil, nil
	res, err = b.Sync(ctx, next, model.Diff(st, next), false)
	if err != nil || !res.Full || fk.count("iptables-legacy-save") != 2 {
		t.Fatalf("sync after failure: full=%v err=%v calls=%q", res.Full, err, fk.calls)
	}
	if fk.rs.Dump() != fresh(t, next) {
		t.Fatal("sync after failure differs from a fresh full render")
	}

	// Canary gone: Verify says so and the next sync re-reads the kernel.
	if err := fk.rs.Restore("*filter\n-X " + ChainCanary + "\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Verify(ctx); ok || err != nil {
		t.Fatalf("Verify without canary: %v %v", ok, err)
	}
	fk.calls = nil
	if _, err := b.Sync(ctx, next, model.Changes{}, false); err != nil || fk.count("iptables-legacy-save") != 2 {
		t.Fatalf("sync after tampering: %v %q", err, fk.calls)
	}

	// Verify fails (rather than answering) when iptables cannot be run properly.
	fk.fail = func(name string, args []string) error {
		return &ExitError{Cmd: name, Code: 4, Stderr: "Another app is currently holding the xtables lock"}
	}
	if _, err := b.Verify(ctx); err == nil {
		t.Fatal("Verify: no error for exit status 4")
	}
	fk.fail = nil

	// Cleanup leaves nothing of ours.
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if d := fk.rs.Dump(); strings.Contains(d, ChainPrefix) {
		t.Fatalf("after Cleanup:\n%s", d)
	}
}

func TestBackendConntrackCalls(t *testing.T) {
	ctx := context.Background()
	b, fk := newFake(t)
	st := fixtureState()
	if _, err := b.Sync(ctx, st, model.Changes{}, true); err != nil {
		t.Fatal(err)
	}
	if n := fk.count("conntrack"); n != 0 {
		t.Fatalf("first sync flushed conntrack %d times", n)
	}
	next := cloneState(st)
	next.Service(model.ServiceKey{Namespace: "default", Name: "dns"}).Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.53", 53, "node2")}
	// A failing conntrack does not fail the sync.
	if _, err := b.Sync(ctx, next, model.Diff(st, next), false); err != nil {
		t.Fatal(err)
	}
	if !containsCall(fk.calls, "conntrack -D -p udp --orig-dst 10.96.0.53 --orig-port-dst 53") {
		t.Fatalf("no conntrack flush of the VIP that got its first endpoint: %q", fk.calls)
	}
}

func containsCall(calls []string, want string) bool {
	for _, c := range calls {
		if c == want {
			return true
		}
	}
	return false
}
