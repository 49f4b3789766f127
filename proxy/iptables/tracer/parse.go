// Package tracer is a small model of the kernel's iptables for tests: it loads
// iptables-restore input (with --noflush semantics, atomically per table) and walks a packet
// through the nat and filter tables, answering which DNAT targets it may reach and with what
// probability, whether it is masqueraded, dropped or rejected.
//
// It understands exactly the matches and targets svcproxy's iptables renderer emits and fails
// on anything else, so a test that uses it cannot silently agree with rules it does not read.
package tracer

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Rule is one parsed rule.
type Rule struct {
	// Text is the rule as written, without "-A CHAIN".
	Text string

	src, dst         *addrMatch
	proto            string
	dport            int
	srcLocal         *bool // -m addrtype --src-type LOCAL (value false when negated)
	dstLocal         *bool
	prob             float64 // -1 when absent
	recent           *recentMatch
	mark             *markMatch
	ctstates         []string
	Comment          string
	target           string // chain name or a built-in target
	dnat             netip.AddrPort
	orMark, xorMark  uint32
	randomFully      bool
	rejectWith       string
	hasMarkOp        bool
	matchedProtoOpts bool
}

type addrMatch struct {
	prefix netip.Prefix
	neg    bool
}

type recentMatch struct {
	name    string
	set     bool
	seconds int // 0: no age limit
}

type markMatch struct {
	value, mask uint32
	neg         bool
}

// Chain is one chain of a table.
type Chain struct {
	Name    string
	Builtin bool
	Policy  string
	Rules   []*Rule
}

// Table is one table.
type Table struct {
	Name   string
	Chains map[string]*Chain
}

// Ruleset is the state of the nat and filter tables of one (model) network namespace.
type Ruleset struct {
	Tables map[string]*Table
}

var builtins = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
}

// New returns a ruleset with empty built-in chains (policy ACCEPT) in nat and filter.
func New() *Ruleset {
	rs := &Ruleset{Tables: map[string]*Table{}}
	for t, chains := range builtins {
		tbl := &Table{Name: t, Chains: map[string]*Chain{}}
		for _, c := range chains {
			tbl.Chains[c] = &Chain{Name: c, Builtin: true, Policy: "ACCEPT"}
		}
		rs.Tables[t] = tbl
	}
	return rs
}

// Parse returns New() with each text restored into it in order.
func Parse(texts ...string) (*Ruleset, error) {
	rs := New()
	for _, t := range texts {
		if err := rs.Restore(t); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

func (t *Table) clone() *Table {
	out := &Table{Name: t.Name, Chains: make(map[string]*Chain, len(t.Chains))}
	for n, c := range t.Chains {
		cc := *c
		cc.Rules = append([]*Rule(nil), c.Rules...)
		out.Chains[n] = &cc
	}
	return out
}

// Restore applies iptables-restore --noflush input: "*table" starts a table, ":CHAIN" creates
// or flushes a user chain (sets the policy of a built-in one), "-A" appends a rule, "-I CHAIN
// [N]" inserts one (at N, default 1), "-D" deletes the first rule equal to the given one, "-X"
// deletes an empty, unreferenced chain, "COMMIT" commits. A table whose block has an error is
// left unchanged, as the kernel does; the error names the line.
func (rs *Ruleset) Restore(text string) error {
	var cur *Table
	var curName string
	for i, line := range strings.Split(text, "\n") {
		lineNo := i + 1
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", lineNo, line, fmt.Sprintf(format, a...))
		}
		switch {
		case line[0] == '*':
			if cur != nil {
				return fail("table %s not committed", curName)
			}
			curName = line[1:]
			t, ok := rs.Tables[curName]
			if !ok {
				return fail("unknown table")
			}
			cur = t.clone()
		case line == "COMMIT":
			if cur == nil {
				return fail("COMMIT outside a table")
			}
			if err := cur.check(); err != nil {
				return fail("%v", err)
			}
			rs.Tables[curName] = cur
			cur = nil
		case cur == nil:
			return fail("outside a table")
		case line[0] == ':':
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return fail("bad chain line")
			}
			if c, ok := cur.Chains[f[0]]; ok {
				if c.Builtin {
					c.Policy = f[1]
				} else {
					c.Rules = nil
				}
				continue
			}
			if f[1] != "-" {
				return fail("policy on a user chain")
			}
			if len(f[0]) > 28 {
				return fail("chain name longer than 28 characters")
			}
			cur.Chains[f[0]] = &Chain{Name: f[0]}
		default:
			args, err := tokenize(line)
			if err != nil {
				return fail("%v", err)
			}
			if len(args) < 2 {
				return fail("too short")
			}
			c, ok := cur.Chains[args[1]]
			if !ok {
				return fail("no chain %s", args[1])
			}
			switch args[0] {
			case "-D":
				spec := args[2:]
				if _, err := parseRule(spec); err != nil {
					return fail("%v", err)
				}
				text := strings.Join(quoteAll(spec), " ")
				found := false
				for i, r := range c.Rules {
					if r.Text == text {
						c.Rules = append(c.Rules[:i:i], c.Rules[i+1:]...)
						found = true
						break
					}
				}
				if !found {
					return fail("no such rule in %s", c.Name)
				}
			case "-X":
				if c.Builtin || len(c.Rules) > 0 || len(args) != 2 {
					return fail("cannot delete chain %s (built-in or not empty)", c.Name)
				}
				if n := cur.references(c.Name); n > 0 {
					return fail("cannot delete chain %s: %d references", c.Name, n)
				}
				delete(cur.Chains, c.Name)
			case "-A", "-I":
				spec := args[2:]
				pos := len(c.Rules) + 1
				if args[0] == "-I" {
					pos = 1
					if len(spec) > 0 {
						if n, err := strconv.Atoi(spec[0]); err == nil {
							if n < 1 || n > len(c.Rules)+1 {
								return fail("bad rule number %d", n)
							}
							pos, spec = n, spec[1:]
						}
					}
				}
				r, err := parseRule(spec)
				if err != nil {
					return fail("%v", err)
				}
				r.Text = strings.Join(quoteAll(spec), " ")
				c.Rules = append(c.Rules[:pos-1], append([]*Rule{r}, c.Rules[pos-1:]...)...)
			default:
				return fail("unknown command %s", args[0])
			}
		}
	}
	if cur != nil {
		return fmt.Errorf("table %s not committed", curName)
	}
	return nil
}

func (t *Table) references(chain string) int {
	n := 0
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if r.target == chain {
				n++
			}
		}
	}
	return n
}

// check verifies that every jump goes to an existing chain, and the targets fit the table.
func (t *Table) check() error {
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			switch r.target {
			case "ACCEPT", "DROP", "RETURN", "MARK":
			case "REJECT":
				if t.Name != "filter" {
					return fmt.Errorf("chain %s: REJECT outside the filter table", c.Name)
				}
			case "DNAT", "MASQUERADE":
				if t.Name != "nat" {
					return fmt.Errorf("chain %s: %s outside the nat table", c.Name, r.target)
				}
			default:
				if _, ok := t.Chains[r.target]; !ok {
					return fmt.Errorf("chain %s: jump to missing chain %s", c.Name, r.target)
				}
			}
		}
	}
	return nil
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") || a == "" {
			out[i] = strconv.Quote(a)
		} else {
			out[i] = a
		}
	}
	return out
}

// tokenize splits a line on blanks, honouring double quotes.
func tokenize(line string) ([]string, error) {
	var out []string
	var b strings.Builder
	in, quoted := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quoted && ch == '\\' && i+1 < len(line):
			i++
			b.WriteByte(line[i])
		case ch == '"':
			quoted = !quoted
			in = true
		case !quoted && (ch == ' ' || ch == '\t'):
			if in {
				out = append(out, b.String())
				b.Reset()
				in = false
			}
		default:
			b.WriteByte(ch)
			in = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote")
	}
	if in {
		out = append(out, b.String())
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		if p != p.Masked() {
			return p, fmt.Errorf("prefix %s has host bits set", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseMark(s string) (value, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	x, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	y := uint64(0xffffffff)
	if hasMask {
		if y, err = strconv.ParseUint(m, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mark mask %q", s)
		}
	}
	return uint32(x), uint32(y), nil
}

// parseRule parses the rule specification after "-A CHAIN". It accepts only the subset the
// renderer emits.
func parseRule(a []string) (*Rule, error) {
	r := &Rule{prob: -1, dport: -1}
	module := ""
	neg := false
	need := func(i int) (string, error) {
		if i+1 >= len(a) {
			return "", fmt.Errorf("%s needs a value", a[i])
		}
		return a[i+1], nil
	}
	for i := 0; i < len(a); i++ {
		tok := a[i]
		if tok == "!" {
			if neg {
				return nil, fmt.Errorf("double negation")
			}
			neg = true
			continue
		}
		v, verr := need(i)
		negHere := neg
		neg = false
		allowNeg := false
		switch tok {
		case "-s", "-d":
			if verr != nil {
				return nil, verr
			}
			p, err := parsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", tok, err)
			}
			m := &addrMatch{prefix: p, neg: negHere}
			if tok == "-s" {
				if r.src != nil {
					return nil, fmt.Errorf("-s given twice")
				}
				r.src = m
			} else {
				if r.dst != nil {
					return nil, fmt.Errorf("-d given twice")
				}
				r.dst = m
			}
			allowNeg = true
			i++
		case "-p":
			if verr != nil {
				return nil, verr
			}
			switch v {
			case "tcp", "udp", "sctp":
			default:
				return nil, fmt.Errorf("unsupported protocol %q", v)
			}
			r.proto = v
			i++
		case "-m":
			if verr != nil {
				return nil, verr
			}
			switch v {
			case "tcp", "udp", "sctp":
				if r.proto != v {
					return nil, fmt.Errorf("-m %s without -p %s", v, v)
				}
			case "comment", "addrtype", "statistic", "recent", "mark", "conntrack":
			default:
				return nil, fmt.Errorf("unsupported match module %q", v)
			}
			module = v
			i++
		case "--dport":
			if module != "tcp" && module != "udp" && module != "sctp" {
				return nil, fmt.Errorf("--dport outside -m tcp/udp/sctp")
			}
			n, err := strconv.ParseUint(v, 10, 16)
			if verr != nil || err != nil {
				return nil, fmt.Errorf("bad --dport %q", v)
			}
			r.dport = int(n)
			i++
		case "--comment":
			if module != "comment" || verr != nil {
				return nil, fmt.Errorf("--comment outside -m comment")
			}
			r.Comment = v
			i++
		case "--src-type", "--dst-type":
			if module != "addrtype" || verr != nil {
				return nil, fmt.Errorf("%s outside -m addrtype", tok)
			}
			if v != "LOCAL" {
				return nil, fmt.Errorf("unsupported address type %q", v)
			}
			b := !negHere
			if tok == "--src-type" {
				r.srcLocal = &b
			} else {
				r.dstLocal = &b
			}
			allowNeg = true
			i++
		case "--mode":
			if module != "statistic" || v != "random" {
				return nil, fmt.Errorf("only -m statistic --mode random is supported")
			}
			i++
		case "--probability":
			if module != "statistic" {
				return nil, fmt.Errorf("--probability outside -m statistic")
			}
			p, err := strconv.ParseFloat(v, 64)
			if verr != nil || err != nil || p <= 0 || p >= 1 {
				return nil, fmt.Errorf("bad probability %q", v)
			}
			r.prob = p
			i++
		case "--name":
			if module != "recent" || verr != nil {
				return nil, fmt.Errorf("--name outside -m recent")
			}
			if r.recent == nil {
				r.recent = &recentMatch{}
			}
			r.recent.name = v
			i++
		case "--rcheck", "--set":
			if module != "recent" {
				return nil, fmt.Errorf("%s outside -m recent", tok)
			}
			if r.recent == nil {
				r.recent = &recentMatch{}
			}
			r.recent.set = tok == "--set"
		case "--seconds":
			if module != "recent" {
				return nil, fmt.Errorf("--seconds outside -m recent")
			}
			n, err := strconv.Atoi(v)
			if verr != nil || err != nil || n <= 0 {
				return nil, fmt.Errorf("bad --seconds %q", v)
			}
			if r.recent == nil {
				r.recent = &recentMatch{}
			}
			r.recent.seconds = n
			i++
		case "--reap":
			if module != "recent" {
				return nil, fmt.Errorf("--reap outside -m recent")
			}
		case "--mark":
			if module != "mark" || verr != nil {
				return nil, fmt.Errorf("--mark outside -m mark")
			}
			val, mask, err := parseMark(v)
			if err != nil {
				return nil, err
			}
			r.mark = &markMatch{value: val, mask: mask, neg: negHere}
			allowNeg = true
			i++
		case "--ctstate":
			if module != "conntrack" || verr != nil {
				return nil, fmt.Errorf("--ctstate outside -m conntrack")
			}
			for _, s := range strings.Split(v, ",") {
				switch s {
				case "NEW", "ESTABLISHED", "RELATED", "INVALID":
				default:
					return nil, fmt.Errorf("unsupported ctstate %q", s)
				}
				r.ctstates = append(r.ctstates, s)
			}
			i++
		case "-j":
			if verr != nil {
				return nil, verr
			}
			if r.target != "" {
				return nil, fmt.Errorf("-j given twice")
			}
			r.target = v
			module = "target:" + v
			i++
		case "--to-destination":
			if module != "target:DNAT" || verr != nil {
				return nil, fmt.Errorf("--to-destination outside -j DNAT")
			}
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return nil, fmt.Errorf("DNAT needs ip:port: %v", err)
			}
			if r.proto == "" {
				return nil, fmt.Errorf("DNAT to a port needs -p")
			}
			r.dnat = ap
			i++
		case "--or-mark", "--xor-mark":
			if module != "target:MARK" || verr != nil {
				return nil, fmt.Errorf("%s outside -j MARK", tok)
			}
			x, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return nil, fmt.Errorf("bad %s %q", tok, v)
			}
			if tok == "--or-mark" {
				r.orMark = uint32(x)
			} else {
				r.xorMark = uint32(x)
			}
			r.hasMarkOp = true
			i++
		case "--random-fully":
			if module != "target:MASQUERADE" {
				return nil, fmt.Errorf("--random-fully outside -j MASQUERADE")
			}
			r.randomFully = true
		case "--reject-with":
			if module != "target:REJECT" || verr != nil {
				return nil, fmt.Errorf("--reject-with outside -j REJECT")
			}
			switch v {
			case "tcp-reset":
				if r.proto != "tcp" {
					return nil, fmt.Errorf("tcp-reset needs -p tcp")
				}
			case "icmp-port-unreachable", "icmp6-port-unreachable":
			default:
				return nil, fmt.Errorf("unsupported --reject-with %q", v)
			}
			r.rejectWith = v
			i++
		default:
			return nil, fmt.Errorf("unsupported option %q", tok)
		}
		if negHere && !allowNeg {
			return nil, fmt.Errorf("! before %s is not supported", tok)
		}
	}
	if neg {
		return nil, fmt.Errorf("dangling !")
	}
	if r.target == "" {
		return nil, fmt.Errorf("rule without -j")
	}
	if r.recent != nil && r.recent.name == "" {
		return nil, fmt.Errorf("-m recent without --name")
	}
	if r.target == "DNAT" && !r.dnat.IsValid() {
		return nil, fmt.Errorf("DNAT without --to-destination")
	}
	if r.target == "MARK" && !r.hasMarkOp {
		return nil, fmt.Errorf("MARK without --or-mark/--xor-mark")
	}
	if r.target == "REJECT" && r.rejectWith == "" {
		r.rejectWith = "icmp-port-unreachable"
	}
	return r, nil
}

// Dump renders the ruleset canonically (tables and chains sorted, rules in order), for
// comparing two rulesets.
func (rs *Ruleset) Dump() string {
	tables := make([]string, 0, len(rs.Tables))
	for t := range rs.Tables {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	return rs.DumpTables(tables...)
}

// DumpTables is Dump limited to the named tables, in the given order.
func (rs *Ruleset) DumpTables(tables ...string) string {
	var b strings.Builder
	for _, t := range tables {
		tbl := rs.Tables[t]
		if tbl == nil {
			continue
		}
		b.WriteString("*" + t + "\n")
		names := make([]string, 0, len(tbl.Chains))
		for n := range tbl.Chains {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			c := tbl.Chains[n]
			pol := "-"
			if c.Builtin {
				pol = c.Policy
			}
			b.WriteString(":" + n + " " + pol + "\n")
		}
		for _, n := range names {
			for _, r := range tbl.Chains[n].Rules {
				b.WriteString("-A " + n + " " + r.Text + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Chain returns chain name of table, or nil.
func (rs *Ruleset) Chain(table, name string) *Chain {
	t := rs.Tables[table]
	if t == nil {
		return nil
	}
	return t.Chains[name]
}
