package netns

import (
	"context"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Snapshot is what a namespace's kernel holds that a proxy could change: iptables and nftables
// rules, links, addresses, IPv4 routes and rules, tc qdiscs and filters (BPF programs attached
// by tc), the BPF programs attached to the sandbox's cgroup, and what is pinned in the
// sandbox's bpffs (TCX links do not show in tc here; a leftover one stays pinned there). Counters and comments that
// change by themselves are normalised away, so two snapshots of an untouched namespace are
// equal.
type Snapshot map[string]string

var (
	iptCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

// Snapshot takes a Snapshot of ns.
func (s *Sandbox) Snapshot(ctx context.Context, ns *Namespace) (Snapshot, error) {
	snap := Snapshot{}
	in := func(argv ...string) []string { return append([]string{"ip", "netns", "exec", ns.Name}, argv...) }
	cmds := []struct {
		name, tool string
		argv       []string
	}{
		{"iptables-save", "iptables-save", in("iptables-save")},
		{"ip6tables-save", "ip6tables-save", in("ip6tables-save")},
		{"iptables-legacy-save", "iptables-legacy-save", in("iptables-legacy-save")},
		{"nft list ruleset", "nft", in("nft", "list", "ruleset")},
		{"links", "ip", []string{"ip", "-n", ns.Name, "-br", "link"}},
		{"addresses", "ip", []string{"ip", "-n", ns.Name, "-4", "-br", "addr"}},
		{"routes", "ip", []string{"ip", "-n", ns.Name, "-4", "route", "show", "table", "all"}},
		{"ip rules", "ip", []string{"ip", "-n", ns.Name, "-4", "rule"}},
		{"tc qdiscs", "tc", in("tc", "qdisc", "show")},
	}
	for _, c := range cmds {
		if _, err := exec.LookPath(c.tool); err != nil {
			continue // a tool that is not installed cannot have made rules either
		}
		out, err := run(ctx, c.argv[0], c.argv[1:]...)
		if err != nil {
			return nil, fmt.Errorf("netns: snapshot %s: %w", c.name, err)
		}
		snap[c.name] = normalise(c.name, string(out))
	}
	// tc filters per link and direction: where tc BPF programs hang.
	links, err := run(ctx, "ip", "-n", ns.Name, "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(links), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		dev, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		for _, dir := range []string{"ingress", "egress"} {
			out, err := run(ctx, "ip", "netns", "exec", ns.Name, "tc", "filter", "show", "dev", dev, dir)
			if err != nil {
				continue // no clsact qdisc: nothing attached
			}
			if t := strings.TrimSpace(string(out)); t != "" {
				snap["tc filter "+dev+" "+dir] = t
			}
		}
	}
	if s.BPFFS != "" {
		var pins []string
		filepath.WalkDir(s.BPFFS, func(path string, d fs.DirEntry, err error) error {
			if err == nil && path != s.BPFFS {
				pins = append(pins, strings.TrimPrefix(path, s.BPFFS))
			}
			return nil
		})
		snap["bpffs pins"] = strings.Join(pins, "\n")
	}
	if s.Cgroup != "" {
		if _, err := exec.LookPath("bpftool"); err == nil {
			out, err := run(ctx, "bpftool", "cgroup", "show", s.Cgroup)
			if err == nil {
				snap["cgroup bpf"] = strings.TrimSpace(string(out))
			}
		}
	}
	return snap, nil
}

func normalise(name, out string) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		line = iptCounters.ReplaceAllString(line, "")
		line = nftCounters.ReplaceAllString(line, "counter")
		keep = append(keep, line)
	}
	if name == "links" || name == "addresses" {
		sort.Strings(keep)
	}
	return strings.Join(keep, "\n")
}

// Diff describes how b differs from a, section by section; "" when they are equal.
func (a Snapshot) Diff(b Snapshot) string {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	var out strings.Builder
	for _, k := range names {
		if a[k] == b[k] {
			continue
		}
		fmt.Fprintf(&out, "== %s differs\n", k)
		av, bv := lineSet(a[k]), lineSet(b[k])
		changed := false
		for _, l := range strings.Split(a[k], "\n") {
			if l != "" && !bv[l] {
				fmt.Fprintf(&out, "- %s\n", l)
				changed = true
			}
		}
		for _, l := range strings.Split(b[k], "\n") {
			if l != "" && !av[l] {
				fmt.Fprintf(&out, "+ %s\n", l)
				changed = true
			}
		}
		if !changed {
			fmt.Fprintf(&out, "  (same lines, different order or count)\n")
		}
		// Short sections in full, for context (which table, which chain).
		if strings.Count(a[k], "\n") < 80 && strings.Count(b[k], "\n") < 80 {
			fmt.Fprintf(&out, "  -- before:\n%s\n  -- after:\n%s\n", indent(a[k]), indent(b[k]))
		}
	}
	return out.String()
}

func indent(s string) string {
	if s == "" {
		return "    (empty)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

func lineSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(s, "\n") {
		m[l] = true
	}
	return m
}
