// Package iptables is svcproxy's iptables backend: it programs a model.State as
// kube-proxy-compatible Service rules in chains of its own (prefixed SVCPROXY-), written with
// one `iptables-restore --noflush` per table, so each table changes atomically.
//
// The package keeps three things apart: the Planner (render.go) is a pure function from
// (what was written, the new State, what changed) to restore input; the Backend (this file) is
// the thin part that runs iptables through a Runner; StaleConntrack computes which UDP
// conntrack entries a sync makes stale. The tracer sub-package walks packets through rendered
// rules for tests. docs/iptables.md describes the chain layout.
package iptables

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	goiptables "github.com/coreos/go-iptables/iptables"

	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// Options configures a Backend.
type Options struct {
	// IPFamily is IPv4 (default) or IPv6 (ip6tables). Dual-stack nodes run one Backend per
	// family.
	IPFamily Family
	// Backend picks the iptables flavour: "nft", "legacy" or "auto" (default): the flavour
	// `iptables` points to, unless only the other flavour holds rules.
	Backend string
	// MasqMark is the mark bit requesting masquerade; default DefaultMasqMark (0x8000).
	MasqMark uint32
	// LockWait is how long iptables waits for the xtables lock (-w); default 5 s.
	LockWait time.Duration
	// NFTChunkRules splits large nat writes of the nft flavour into restores of about this
	// many rules (see Config.ChunkRules); 0 means 8000, negative means never split. The
	// legacy flavour always writes one restore per table.
	NFTChunkRules int
	// Logger receives sync details; default discards.
	Logger *slog.Logger
	// Runner runs the commands; default ExecRunner (the caller's network namespace).
	Runner Runner
}

// Backend implements proxy.Backend with iptables.
type Backend struct {
	log     *slog.Logger
	run     Runner
	family  Family
	flavour string // "nft" or "legacy"
	bin     struct{ iptables, save, restore string }
	wait    string

	mu        sync.Mutex
	planner   *Planner
	written   *Written
	lastState *model.State
	needFull  bool
	readKern  bool // read the kernel's chains before the next full sync
	// lastFilter is the filter input of the last successful sync. The filter table holds only
	// chains rewritten by every sync, so restoring it again undoes a newer filter write when
	// the nat write after it fails.
	lastFilter []byte
}

var _ proxy.Backend = (*Backend)(nil)

// New returns a Backend for opts. It picks the iptables flavour (running `iptables
// --version` and, for "auto", the save commands of both flavours) and checks the binaries;
// it fails when they are missing or opts is invalid. It writes nothing.
func New(ctx context.Context, opts Options) (*Backend, error) {
	b := &Backend{log: opts.Logger, run: opts.Runner, family: opts.IPFamily, readKern: true, needFull: true}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.run == nil {
		b.run = ExecRunner{}
	}
	if b.family == 0 {
		b.family = IPv4
	}
	if b.family != IPv4 && b.family != IPv6 {
		return nil, fmt.Errorf("iptables backend: IPFamily %d: must be 4 or 6", b.family)
	}
	if opts.MasqMark != 0 && opts.MasqMark&(opts.MasqMark-1) != 0 {
		return nil, fmt.Errorf("iptables backend: MasqMark %#x: must be a single bit", opts.MasqMark)
	}
	wait := opts.LockWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	b.wait = strconv.Itoa(int((wait + time.Second - 1) / time.Second))

	base := "iptables"
	if b.family == IPv6 {
		base = "ip6tables"
	}
	switch opts.Backend {
	case "nft", "legacy":
		b.flavour = opts.Backend
	case "", "auto":
		f, err := detectFlavour(ctx, b.run, base)
		if err != nil {
			return nil, err
		}
		b.flavour = f
	default:
		return nil, fmt.Errorf("iptables backend: Backend %q: must be auto, nft or legacy", opts.Backend)
	}
	b.bin.iptables = base + "-" + b.flavour
	b.bin.save = base + "-" + b.flavour + "-save"
	b.bin.restore = base + "-" + b.flavour + "-restore"

	// go-iptables finds the binary and knows from its version whether MASQUERADE
	// --random-fully is supported.
	path, err := exec.LookPath(b.bin.iptables)
	if err != nil {
		return nil, fmt.Errorf("iptables backend: %s not found: %w", b.bin.iptables, err)
	}
	proto := goiptables.ProtocolIPv4
	if b.family == IPv6 {
		proto = goiptables.ProtocolIPv6
	}
	ipt, err := goiptables.New(goiptables.IPFamily(proto), goiptables.Path(path))
	if err != nil {
		return nil, fmt.Errorf("iptables backend: probing %s: %w", path, err)
	}
	chunk := 0
	if b.flavour == "nft" {
		switch {
		case opts.NFTChunkRules == 0:
			chunk = 8000
		case opts.NFTChunkRules > 0:
			chunk = opts.NFTChunkRules
		}
	}
	b.planner = NewPlanner(Config{Family: b.family, MasqMark: opts.MasqMark, NoRandomFully: !ipt.HasRandomFully(), ChunkRules: chunk})
	b.log.Info("iptables backend", "family", b.family.String(), "flavour", b.flavour, "binary", path)
	return b, nil
}

// detectFlavour returns the flavour `base` points to, or the other one when only that one
// holds rules (like Kubernetes' iptables-wrapper).
func detectFlavour(ctx context.Context, r Runner, base string) (string, error) {
	out, err := r.Run(ctx, base, []string{"--version"}, nil)
	if err != nil {
		return "", fmt.Errorf("iptables backend: detecting the iptables flavour: %w", err)
	}
	def, other := "legacy", "nft"
	if bytes.Contains(out, []byte("nf_tables")) {
		def, other = "nft", "legacy"
	}
	count := func(f string) int {
		o, err := r.Run(ctx, base+"-"+f+"-save", nil, nil)
		if err != nil {
			return 0
		}
		return bytes.Count(o, []byte("\n-A "))
	}
	if count(def) == 0 && count(other) > 0 {
		return other, nil
	}
	return def, nil
}

// Name implements proxy.Backend.
func (b *Backend) Name() string { return "iptables" }

// Flavour returns "nft" or "legacy".
func (b *Backend) Flavour() string { return b.flavour }

// Binaries returns the iptables, save and restore commands the backend runs.
func (b *Backend) Binaries() (iptables, save, restore string) {
	return b.bin.iptables, b.bin.save, b.bin.restore
}

// JumpRule is a rule in a built-in chain that sends traffic into svcproxy's chains.
type JumpRule struct {
	Table, Chain string
	Args         []string
}

// JumpRules returns the rules the backend keeps in the built-in chains, in the order they
// appear in each chain.
func JumpRules() []JumpRule {
	c := func(s string) []string { return []string{"-m", "comment", "--comment", s} }
	newc := []string{"-m", "conntrack", "--ctstate", "NEW"}
	j := func(parts ...[]string) []string {
		var out []string
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	portals := c("svcproxy service portals")
	ext := c("svcproxy externally-visible service portals")
	fw := c("svcproxy load balancer firewall")
	return []JumpRule{
		{"nat", "PREROUTING", j(portals, []string{"-j", ChainServices})},
		{"nat", "OUTPUT", j(portals, []string{"-j", ChainServices})},
		{"nat", "POSTROUTING", j(c("svcproxy postrouting rules"), []string{"-j", ChainPostrouting})},
		{"filter", "INPUT", j(newc, fw, []string{"-j", ChainFirewall})},
		{"filter", "INPUT", j(newc, ext, []string{"-j", ChainExternalServices})},
		{"filter", "INPUT", j(c("svcproxy health check service ports"), []string{"-j", ChainNodePorts})},
		{"filter", "FORWARD", j(newc, fw, []string{"-j", ChainFirewall})},
		{"filter", "FORWARD", j(newc, portals, []string{"-j", ChainServices})},
		{"filter", "FORWARD", j(newc, ext, []string{"-j", ChainExternalServices})},
		{"filter", "FORWARD", j(c("svcproxy forwarding rules"), []string{"-j", ChainForward})},
		{"filter", "OUTPUT", j(newc, fw, []string{"-j", ChainFirewall})},
		{"filter", "OUTPUT", j(newc, portals, []string{"-j", ChainServices})},
		{"filter", "OUTPUT", j(newc, ext, []string{"-j", ChainExternalServices})},
	}
}

// JumpRulesRestore renders JumpRules as iptables-restore input appending to the built-in
// chains, for the tracer.
func JumpRulesRestore() string {
	var sb strings.Builder
	for _, t := range []string{"nat", "filter"} {
		sb.WriteString("*" + t + "\n")
		for _, r := range JumpRules() {
			if r.Table != t {
				continue
			}
			sb.WriteString("-A " + r.Chain)
			for _, a := range r.Args {
				sb.WriteString(" ")
				if strings.Contains(a, " ") {
					sb.WriteString(strconv.Quote(a))
				} else {
					sb.WriteString(a)
				}
			}
			sb.WriteString("\n")
		}
		sb.WriteString("COMMIT\n")
	}
	return sb.String()
}

func (b *Backend) ipt(ctx context.Context, args ...string) ([]byte, error) {
	return b.run.Run(ctx, b.bin.iptables, append([]string{"-w", b.wait}, args...), nil)
}

// ensureJumps inserts every missing jump rule; present ones stay where they are. Rules of a
// chain are inserted bottom-up at position 1, so a fresh chain gets them in JumpRules order.
func (b *Backend) ensureJumps(ctx context.Context) error {
	rules := JumpRules()
	for i := len(rules) - 1; i >= 0; i-- {
		r := rules[i]
		_, err := b.ipt(ctx, append([]string{"-t", r.Table, "-C", r.Chain}, r.Args...)...)
		if err == nil {
			continue
		}
		if exitCode(err) != 1 {
			return fmt.Errorf("iptables backend: checking jump rule in %s/%s: %w", r.Table, r.Chain, err)
		}
		if _, err := b.ipt(ctx, append([]string{"-t", r.Table, "-I", r.Chain, "1"}, r.Args...)...); err != nil {
			return fmt.Errorf("iptables backend: inserting jump rule in %s/%s: %w", r.Table, r.Chain, err)
		}
	}
	return nil
}

// kernelTable is what iptables-save shows of one table: its chains, and the rules of
// built-in chains that jump into svcproxy's chains (as "-A CHAIN ..." lines). Foreign user
// chains jumping into ours are not ours to delete.
type kernelTable struct {
	chains []string
	jumps  []string
}

// hasJump reports whether a rule of built-in chain jumps to target.
func (k kernelTable) hasJump(chain, target string) bool {
	for _, l := range k.jumps {
		if strings.HasPrefix(l, "-A "+chain+" ") && strings.HasSuffix(l, " -j "+target) {
			return true
		}
	}
	return false
}

func (k kernelTable) hasChain(chain string) bool {
	for _, c := range k.chains {
		if c == chain {
			return true
		}
	}
	return false
}

// kernelState reads table with iptables-save.
func (b *Backend) kernelState(ctx context.Context, table string) (kernelTable, error) {
	var k kernelTable
	out, err := b.run.Run(ctx, b.bin.save, []string{"-t", table}, nil)
	if err != nil {
		return k, fmt.Errorf("iptables backend: reading table %s: %w", table, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, ":"):
			if f := strings.Fields(l[1:]); len(f) > 0 {
				k.chains = append(k.chains, f[0])
			}
		case strings.HasPrefix(l, "-A ") && strings.Contains(l, " -j "+ChainPrefix):
			switch strings.Fields(l)[1] {
			case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
				k.jumps = append(k.jumps, l)
			}
		}
	}
	return k, sc.Err()
}

// withLines returns restore input with extra lines inserted before its final COMMIT.
func withLines(input []byte, lines []string) []byte {
	if len(lines) == 0 {
		return input
	}
	body := bytes.TrimSuffix(input, []byte("COMMIT\n"))
	out := make([]byte, 0, len(input)+256*len(lines))
	out = append(out, body...)
	for _, l := range lines {
		out = append(out, l...)
		out = append(out, '\n')
	}
	return append(out, "COMMIT\n"...)
}

// missingJumps returns "-I CHAIN 1 ..." lines for the jump rules of table absent in k, in an
// order that leaves them in JumpRules order at the top of each chain.
func missingJumps(table string, k kernelTable) []string {
	rules := JumpRules()
	var out []string
	for i := len(rules) - 1; i >= 0; i-- {
		r := rules[i]
		if r.Table != table || k.hasJump(r.Chain, r.Args[len(r.Args)-1]) {
			continue
		}
		var sb strings.Builder
		sb.WriteString("-I " + r.Chain + " 1")
		for _, a := range r.Args {
			sb.WriteByte(' ')
			if strings.Contains(a, " ") {
				sb.WriteString(strconv.Quote(a))
			} else {
				sb.WriteString(a)
			}
		}
		out = append(out, sb.String())
	}
	return out
}

func (b *Backend) restore(ctx context.Context, table string, input []byte) error {
	_, err := b.run.Run(ctx, b.bin.restore, []string{"-w", b.wait, "--noflush"}, input)
	if err != nil {
		return fmt.Errorf("iptables backend: %s refused table %s: %w", b.bin.restore, table, err)
	}
	return nil
}

// Sync implements proxy.Backend. A partial sync (full false) rewrites the dispatch chains and
// the chains of changes.Services only; the backend forces a full sync itself on its first
// call, after a failed one, and when changes.Settings is set. st must be sorted.
func (b *Backend) Sync(ctx context.Context, st *model.State, changes model.Changes, full bool) (proxy.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	full = full || b.needFull || b.written == nil || changes.Settings
	prev := b.written
	// On the first full sync and after a failure the kernel is read: stale chains are deleted
	// and missing jump rules are inserted in the same restore as the chains they jump to.
	var kern map[string]kernelTable
	if full && b.readKern {
		kern = map[string]kernelTable{}
		tables := map[string][]string{}
		for _, t := range []string{"nat", "filter"} {
			k, err := b.kernelState(ctx, t)
			if err != nil {
				b.needFull = true
				return proxy.SyncResult{Full: true}, err
			}
			kern[t], tables[t] = k, k.chains
		}
		prev = prev.WithKernelChains(tables)
	}
	start := time.Now()
	plan := b.planner.Plan(prev, st, changes, full)
	res := proxy.SyncResult{Full: plan.Full, ServicesWritten: plan.ServicesWritten, Objects: plan.Rules}

	// Until both tables and the jump rules are known good, the next sync is a full one that
	// reads the kernel first.
	b.needFull, b.readKern = true, true
	planned := time.Now()
	filterIn, natIn := plan.Filter, plan.NAT
	if kern != nil {
		filterIn = withLines(filterIn, missingJumps("filter", kern["filter"]))
		natIn = withLines(natIn, missingJumps("nat", kern["nat"]))
	}
	if filterIn != nil {
		if err := b.restore(ctx, "filter", filterIn); err != nil {
			return res, err
		}
	}
	for i, c := range plan.NATChunks {
		if err := b.restore(ctx, "nat", c); err != nil {
			// Earlier chunks are in (whole services each); the dispatch chains are not.
			if filterIn != nil {
				b.rollbackFilter(ctx)
			}
			return res, fmt.Errorf("chunk %d of %d: %w", i+1, len(plan.NATChunks), err)
		}
	}
	if natIn != nil {
		if err := b.restore(ctx, "nat", natIn); err != nil {
			if filterIn != nil {
				b.rollbackFilter(ctx)
			}
			return res, err
		}
	}
	restored := time.Now()
	if plan.Full && kern == nil {
		// Periodic full sync: check the jump rules one by one.
		if err := b.ensureJumps(ctx); err != nil {
			return res, err
		}
	}
	jumped := time.Now()
	b.needFull, b.readKern = false, false
	b.written = plan.Written
	if plan.Filter != nil {
		b.lastFilter = plan.Filter
	}
	prevState := b.lastState
	b.lastState = st
	b.log.Debug("iptables sync", "full", plan.Full, "services", plan.ServicesWritten, "rules", plan.Rules,
		"deleted", len(plan.Deleted), "natBytes", len(plan.NAT), "natChunks", len(plan.NATChunks), "filterBytes", len(plan.Filter),
		"plan", planned.Sub(start), "restore", restored.Sub(planned), "jumps", jumped.Sub(restored))

	var only map[model.ServiceKey]struct{}
	if !changes.Settings {
		only = changes.Services
	}
	for _, f := range StaleConntrack(prevState, st, b.family, only) {
		args := f.Args(b.family)
		out, err := b.run.Run(ctx, "conntrack", args, nil)
		if err != nil && !(exitCode(err) == 1 && bytes.Contains([]byte(err.Error()), []byte("0 flow entries"))) {
			// A stale entry left behind only delays recovery of that flow; the rules are in.
			b.log.Warn("deleting stale conntrack entries failed", "args", strings.Join(args, " "), "err", err)
			continue
		}
		b.log.Debug("deleted stale conntrack entries", "args", strings.Join(args, " "), "out", string(out))
	}
	return res, nil
}

func (b *Backend) rollbackFilter(ctx context.Context) {
	if b.lastFilter == nil {
		return
	}
	if err := b.restore(ctx, "filter", b.lastFilter); err != nil {
		b.log.Error("rolling back the filter table after the nat table was refused failed", "err", err)
	}
}

// Verify implements proxy.Backend: it reports whether the canary chains in nat and filter
// still exist. It fails only when iptables cannot be run or answers with an unexpected error.
func (b *Backend) Verify(ctx context.Context) (bool, error) {
	for _, t := range []string{"nat", "filter"} {
		_, err := b.ipt(ctx, "-t", t, "-S", ChainCanary)
		if err == nil {
			continue
		}
		if exitCode(err) == 1 {
			// Flushed by someone: the next sync is a full one that reads the kernel again.
			b.mu.Lock()
			b.needFull, b.readKern = true, true
			b.mu.Unlock()
			return false, nil
		}
		return false, fmt.Errorf("iptables backend: checking canary in %s: %w", t, err)
	}
	return true, nil
}

// Cleanup implements proxy.Backend: it deletes every rule of a built-in chain that jumps into
// an SVCPROXY- chain and then every SVCPROXY- chain of nat and filter, in one restore per
// table. Nothing else is touched. It fails when a removal is refused (for example a foreign
// user chain jumps into one of ours).
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.needFull, b.readKern, b.written, b.lastState, b.lastFilter = true, true, nil, nil, nil
	// Per table: one restore deletes the jump rules (as iptables-save spells them) and flushes
	// and deletes every SVCPROXY- chain. The nft flavour, whose restore time grows with the
	// square of its input, removes the jump rules first, then flushes all chains and deletes
	// them in chunks (a chain can go once nothing refers to it).
	var errs []error
	var prune []string
	for _, t := range []string{"filter", "nat"} {
		k, err := b.kernelState(ctx, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ours []string
		for _, c := range k.chains {
			if strings.HasPrefix(c, ChainPrefix) {
				ours = append(ours, c)
			}
		}
		var jumps strings.Builder
		for _, l := range k.jumps {
			jumps.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
		}
		if len(ours)+len(k.jumps) > 0 && b.flavour == "nft" {
			prune = append(prune, t)
		}
		chunk := b.planner.cfg.ChunkRules
		if chunk <= 0 || len(ours) <= chunk {
			var decl, del strings.Builder
			for _, c := range ours {
				decl.WriteString(":" + c + " - [0:0]\n")
				del.WriteString("-X " + c + "\n")
			}
			if decl.Len()+jumps.Len() == 0 {
				continue
			}
			if err := b.restore(ctx, t, []byte("*"+t+"\n"+decl.String()+jumps.String()+del.String()+"COMMIT\n")); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		inputs := []string{"*" + t + "\n" + jumps.String() + "COMMIT\n"}
		for _, line := range []func(string) string{
			func(c string) string { return ":" + c + " - [0:0]\n" },
			func(c string) string { return "-X " + c + "\n" },
		} {
			for i := 0; i < len(ours); i += chunk {
				var sb strings.Builder
				sb.WriteString("*" + t + "\n")
				for _, c := range ours[i:min(i+chunk, len(ours))] {
					sb.WriteString(line(c))
				}
				sb.WriteString("COMMIT\n")
				inputs = append(inputs, sb.String())
			}
		}
		for _, in := range inputs {
			if err := b.restore(ctx, t, []byte(in)); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if len(errs) == 0 {
		for _, t := range prune {
			if err := b.pruneEmptyBaseChains(ctx, t); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// pruneEmptyBaseChains removes, from an nft table we cleaned, the base chains that iptables-nft
// created when our jump rules went in and that are now empty with policy accept (they filter
// nothing), and the table itself when no chain, set or map is left, so `nft list ruleset`
// reads as before the daemon ran. A chain that holds any rule or another policy is kept.
func (b *Backend) pruneEmptyBaseChains(ctx context.Context, table string) error {
	fam := "ip"
	if b.family == IPv6 {
		fam = "ip6"
	}
	out, err := b.run.Run(ctx, "nft", []string{"-j", "list", "table", fam, table}, nil)
	if err != nil {
		return nil // no nft binary or no such table: nothing to prune
	}
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("iptables backend: reading nft table %s %s: %w", fam, table, err)
	}
	type chain struct {
		Name   string `json:"name"`
		Hook   string `json:"hook"`
		Policy string `json:"policy"`
	}
	var chains []chain
	rules := map[string]int{}
	others := 0
	for _, obj := range doc.Nftables {
		for kind, raw := range obj {
			switch kind {
			case "chain":
				var c chain
				if json.Unmarshal(raw, &c) == nil {
					chains = append(chains, c)
				}
			case "rule":
				var r struct {
					Chain string `json:"chain"`
				}
				if json.Unmarshal(raw, &r) == nil {
					rules[r.Chain]++
				}
			case "set", "map", "flowtable", "counter", "quota", "limit", "ct helper", "secmark", "synproxy":
				others++
			}
		}
	}
	left := 0
	for _, c := range chains {
		if c.Hook == "" || rules[c.Name] > 0 || c.Policy != "accept" {
			left++
			continue
		}
		if _, err := b.run.Run(ctx, "nft", []string{"delete", "chain", fam, table, c.Name}, nil); err != nil {
			left++
			b.log.Warn("could not remove an empty base chain", "table", table, "chain", c.Name, "err", err)
		}
	}
	if left == 0 && others == 0 {
		if _, err := b.run.Run(ctx, "nft", []string{"delete", "table", fam, table}, nil); err != nil {
			b.log.Warn("could not remove an empty table", "table", table, "err", err)
		}
	}
	return nil
}
