package tracer

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Packet is the first packet of a connection to trace.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp" or "sctp"
	DPort    uint16
	// FromLocal is true for a packet sent by a process of this node (nat OUTPUT, filter
	// OUTPUT); false for one arriving on an interface (nat PREROUTING, then filter INPUT or
	// FORWARD).
	FromLocal bool
	// LocalAddrs are this node's addresses (addrtype LOCAL); loopback addresses always are.
	LocalAddrs []netip.Addr
	// CtState is the conntrack state; "" means NEW. Only NEW packets pass the nat table.
	CtState string
	// Recent holds the xt_recent lists: name -> source address -> seconds since last seen.
	Recent map[string]map[netip.Addr]int
}

// Verdict is what finally happens to the packet.
type Verdict string

// Verdicts.
const (
	Accept Verdict = "ACCEPT"
	Drop   Verdict = "DROP"
	Reject Verdict = "REJECT"
)

// Outcome is one possible fate of the packet.
type Outcome struct {
	Prob    float64
	Verdict Verdict
	// RejectWith is the REJECT type when Verdict is Reject.
	RejectWith string
	// DNAT is the destination after nat (invalid when not translated).
	DNAT netip.AddrPort
	// Masquerade is true when POSTROUTING masqueraded the packet.
	Masquerade bool
	// RecentSet lists the xt_recent lists the packet's source was added to.
	RecentSet []string
	// Path lists the chains traversed, "table/chain".
	Path []string
}

// Result is the set of possible outcomes; their probabilities sum to 1.
type Result struct {
	Outcomes []Outcome
}

// Targets returns the DNAT destinations of accepted outcomes with their probabilities.
func (r Result) Targets() map[netip.AddrPort]float64 {
	m := map[netip.AddrPort]float64{}
	for _, o := range r.Outcomes {
		if o.Verdict == Accept && o.DNAT.IsValid() {
			m[o.DNAT] += o.Prob
		}
	}
	return m
}

// Prob returns the total probability of outcomes for which f is true.
func (r Result) Prob(f func(Outcome) bool) float64 {
	p := 0.0
	for _, o := range r.Outcomes {
		if f(o) {
			p += o.Prob
		}
	}
	return p
}

// String lists the outcomes, for test failures.
func (r Result) String() string {
	var b strings.Builder
	for _, o := range r.Outcomes {
		fmt.Fprintf(&b, "%.6f %s", o.Prob, o.Verdict)
		if o.RejectWith != "" {
			fmt.Fprintf(&b, "(%s)", o.RejectWith)
		}
		if o.DNAT.IsValid() {
			fmt.Fprintf(&b, " dnat=%s", o.DNAT)
		}
		if o.Masquerade {
			b.WriteString(" masq")
		}
		fmt.Fprintf(&b, " via %s\n", strings.Join(o.Path, " "))
	}
	return b.String()
}

// state is the packet while it is walked.
type state struct {
	dst       netip.Addr
	dport     uint16
	dnat      netip.AddrPort
	mark      uint32
	masq      bool
	recentSet []string
	path      []string
}

func (s state) with(path string) state {
	s.path = append(append([]string(nil), s.path...), path)
	return s
}

type branch struct {
	st      state
	prob    float64
	verdict string // "" continue / fell through, "RETURN", or a terminal verdict
	reject  string
}

type tracer struct {
	rs *Ruleset
	p  *Packet
}

const maxDepth = 32

// Trace walks p through the ruleset: nat PREROUTING or OUTPUT, then filter INPUT, FORWARD or
// OUTPUT, then nat POSTROUTING (unless delivered locally after arriving on an interface). It
// fails on a rule it cannot evaluate.
func (rs *Ruleset) Trace(p Packet) (Result, error) {
	if p.Proto == "" {
		return Result{}, fmt.Errorf("packet without protocol")
	}
	t := &tracer{rs: rs, p: &p}
	start := state{dst: p.Dst, dport: p.DPort}
	nat := rs.Tables["nat"]
	filter := rs.Tables["filter"]
	newConn := p.CtState == "" || p.CtState == "NEW"

	pre := "PREROUTING"
	if p.FromLocal {
		pre = "OUTPUT"
	}
	var after []branch
	if newConn {
		bs, err := t.walk(nat, pre, start, 1, 0)
		if err != nil {
			return Result{}, err
		}
		after = bs
	} else {
		after = []branch{{st: start, prob: 1, verdict: "ACCEPT"}}
	}

	var res Result
	for _, b := range after {
		if b.verdict != "ACCEPT" {
			res.add(b)
			continue
		}
		fchain := "OUTPUT"
		local := false
		if !p.FromLocal {
			if t.isLocal(b.st.dst) {
				fchain, local = "INPUT", true
			} else {
				fchain = "FORWARD"
			}
		}
		fbs, err := t.walk(filter, fchain, b.st, b.prob, 0)
		if err != nil {
			return Result{}, err
		}
		for _, fb := range fbs {
			if fb.verdict != "ACCEPT" || local || !newConn {
				res.add(fb)
				continue
			}
			pbs, err := t.walk(nat, "POSTROUTING", fb.st, fb.prob, 0)
			if err != nil {
				return Result{}, err
			}
			for _, pb := range pbs {
				res.add(pb)
			}
		}
	}
	return res, nil
}

func (r *Result) add(b branch) {
	if b.prob == 0 {
		return
	}
	o := Outcome{Prob: b.prob, Verdict: Verdict(b.verdict), RejectWith: b.reject, DNAT: b.st.dnat,
		Masquerade: b.st.masq, RecentSet: b.st.recentSet, Path: b.st.path}
	r.Outcomes = append(r.Outcomes, o)
	sort.SliceStable(r.Outcomes, func(i, j int) bool {
		return r.Outcomes[i].DNAT.String() < r.Outcomes[j].DNAT.String()
	})
}

func (t *tracer) isLocal(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	for _, l := range t.p.LocalAddrs {
		if l == a {
			return true
		}
	}
	return false
}

// walk runs chain of tbl for st with probability prob. Returned branches carry a terminal
// verdict, or "" when they fell off the end of (or returned from) a user chain. Fall-through of
// a built-in chain yields its policy.
func (t *tracer) walk(tbl *Table, chain string, st state, prob float64, depth int) ([]branch, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("jump depth over %d at %s/%s", maxDepth, tbl.Name, chain)
	}
	c := tbl.Chains[chain]
	if c == nil {
		return nil, fmt.Errorf("no chain %s/%s", tbl.Name, chain)
	}
	st = st.with(tbl.Name + "/" + chain)
	var out []branch
	cur := []branch{{st: st, prob: prob}}
	for _, r := range c.Rules {
		var next []branch
		for _, b := range cur {
			pm, ms, err := t.match(r, b.st)
			if err != nil {
				return nil, fmt.Errorf("%s/%s %q: %v", tbl.Name, chain, r.Text, err)
			}
			if pm < 1 {
				next = append(next, branch{st: b.st, prob: b.prob * (1 - pm)})
			}
			if pm == 0 {
				continue
			}
			res, err := t.target(tbl, r, ms, b.prob*pm, depth)
			if err != nil {
				return nil, err
			}
			for _, rb := range res {
				switch rb.verdict {
				case "":
					next = append(next, rb)
				case "RETURN":
					if c.Builtin {
						rb.verdict = c.Policy
						out = append(out, rb)
					} else {
						rb.verdict = ""
						out = append(out, rb)
					}
				default:
					out = append(out, rb)
				}
			}
		}
		cur = next
	}
	for _, b := range cur {
		if c.Builtin {
			b.verdict = c.Policy
		}
		out = append(out, b)
	}
	return out, nil
}

// match returns the probability that r matches, and the state after the match (xt_recent
// --set records the source).
func (t *tracer) match(r *Rule, st state) (float64, state, error) {
	p := t.p
	if r.src != nil && r.src.prefix.Contains(p.Src) == r.src.neg {
		return 0, st, nil
	}
	if r.dst != nil && r.dst.prefix.Contains(st.dst) == r.dst.neg {
		return 0, st, nil
	}
	if r.proto != "" && r.proto != p.Proto {
		return 0, st, nil
	}
	if r.dport >= 0 && uint16(r.dport) != st.dport {
		return 0, st, nil
	}
	if r.srcLocal != nil && t.isLocal(p.Src) != *r.srcLocal {
		return 0, st, nil
	}
	if r.dstLocal != nil && t.isLocal(st.dst) != *r.dstLocal {
		return 0, st, nil
	}
	if r.mark != nil && (st.mark&r.mark.mask == r.mark.value) == r.mark.neg {
		return 0, st, nil
	}
	if len(r.ctstates) > 0 {
		cs := p.CtState
		if cs == "" {
			cs = "NEW"
		}
		ok := false
		for _, s := range r.ctstates {
			if s == cs {
				ok = true
			}
		}
		if !ok {
			return 0, st, nil
		}
	}
	if r.recent != nil {
		if r.recent.set {
			st.recentSet = append(append([]string(nil), st.recentSet...), r.recent.name)
		} else {
			age, ok := p.Recent[r.recent.name][p.Src]
			if !ok || (r.recent.seconds > 0 && age >= r.recent.seconds) {
				return 0, st, nil
			}
		}
	}
	if r.prob >= 0 {
		return r.prob, st, nil
	}
	return 1, st, nil
}

func (t *tracer) target(tbl *Table, r *Rule, st state, prob float64, depth int) ([]branch, error) {
	switch r.target {
	case "ACCEPT", "DROP":
		return []branch{{st: st, prob: prob, verdict: r.target}}, nil
	case "REJECT":
		return []branch{{st: st, prob: prob, verdict: "REJECT", reject: r.rejectWith}}, nil
	case "RETURN":
		return []branch{{st: st, prob: prob, verdict: "RETURN"}}, nil
	case "MARK":
		st.mark = (st.mark | r.orMark) ^ r.xorMark
		return []branch{{st: st, prob: prob}}, nil
	case "DNAT":
		if r.proto == "" || r.proto != t.p.Proto {
			return nil, fmt.Errorf("DNAT of a %s packet by a rule without -p %s", t.p.Proto, t.p.Proto)
		}
		st.dnat = r.dnat
		st.dst = r.dnat.Addr()
		st.dport = r.dnat.Port()
		return []branch{{st: st, prob: prob, verdict: "ACCEPT"}}, nil
	case "MASQUERADE":
		st.masq = true
		return []branch{{st: st, prob: prob, verdict: "ACCEPT"}}, nil
	}
	return t.walk(tbl, r.target, st, prob, depth+1)
}
