package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

const hostileHead = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
`

// laughs is the "billion laughs": ten lists of ten aliases of the list before, 10^10 nodes
// once expanded, in a file of 1 kB.
func laughs() string {
	var b strings.Builder
	b.WriteString(hostileHead + "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i < 10; i++ {
		fmt.Fprintf(&b, "x%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d, ", i-1), 10), ", "))
	}
	b.WriteString("services:\n  - name: a\n    ports: [{port: 80}]\n    selector: *a9\n")
	return b.String()
}

// mergeLaughs doubles a mapping forty times with merge keys: 2^40 merges once expanded.
func mergeLaughs() string {
	var b strings.Builder
	b.WriteString(hostileHead + "x0: &m0 {name: a, ports: [{port: 80}]}\n")
	for i := 1; i < 40; i++ {
		fmt.Fprintf(&b, "x%d: &m%d {<<: [*m%d, *m%d]}\n", i, i, i-1, i-1)
	}
	b.WriteString("services:\n  - <<: *m39\n")
	return b.String()
}

// aliasChain makes n anchors, each a list holding an alias of the one before: nested n deep.
func aliasChain(n int) string {
	var b strings.Builder
	b.WriteString(hostileHead + "c0: &c0 [10.0.0.1]\n")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "c%d: &c%d [*c%d]\n", i, i, i-1)
	}
	return b.String()
}

// nested returns a ProxyConfig whose services value is levels lists deep (flow or block).
func nested(levels int, block bool) string {
	if !block {
		return hostileHead + "services: " + strings.Repeat("[", levels) + strings.Repeat("]", levels) + "\n"
	}
	var b strings.Builder
	b.WriteString(hostileHead + "services:\n")
	for i := 0; i < levels; i++ {
		b.WriteString(strings.Repeat(" ", i+1) + "-\n")
	}
	return b.String()
}

// hostileCases are inputs the parser once failed on (it crashed, hung, ran out of memory or
// gave no line), with the one problem each must now end in.
var hostileCases = []struct {
	name       string
	yaml       string
	line, col  int
	field, msg string
}{
	{
		name: "merge key merging its own mapping",
		yaml: hostileHead + "services:\n  - &x {name: a, <<: *x}\n",
		line: 5, col: 22, field: "services[0].<<",
		msg: "merge key <<: *x merges the mapping &x (line 5) that holds it",
	},
	{
		name: "merge key merging an enclosing mapping",
		yaml: hostileHead + "services:\n  - &outer\n    name: a\n    healthCheck:\n      <<: *outer\n",
		line: 8, col: 11, field: "services[0].healthCheck.<<",
		msg: "merge key <<: *outer merges the mapping &outer (line 5) that holds it",
	},
	{
		name: "merge key in a list of merges",
		yaml: hostileHead + "base: &b {name: a}\nservices:\n  - &x {<<: [*b, *x]}\n",
		line: 6, col: 18, field: "services[0].<<[1]",
		msg: "merge key <<: *x merges the mapping &x (line 6) that holds it",
	},
	{
		name: "alias inside its own anchor",
		yaml: hostileHead + "services:\n  - &x {name: a, ports: [{port: 80}], endpoints: *x}\n",
		line: 5, col: 50, field: "services[0].endpoints",
		msg: "alias *x refers to &x (line 5), which contains it",
	},
	{
		name: "list holding itself",
		yaml: hostileHead + "services: &s\n  - *s\n",
		line: 5, col: 5, field: "services[0]",
		msg: "alias *s refers to &s (line 4), which contains it",
	},
	{
		name: "cycle under an unknown field",
		yaml: hostileHead + "extra: &e {a: [1, {b: *e}]}\n",
		line: 4, col: 23, field: "extra.a[1].b",
		msg: "alias *e refers to &e (line 4)",
	},
	{
		name: "cycle in a Kubernetes Service",
		yaml: "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  managedFields:\n    - &m {manager: x, fieldsV1: {f: *m}}\nspec: {ports: [{port: 80}]}\n",
		line: 6, col: 37, field: "metadata.managedFields[0].fieldsV1.f",
		msg: "alias *m refers to &m (line 6)",
	},
	{
		name: "deep alias chain",
		yaml: aliasChain(150),
		line: 103, col: 12, field: "c99[0]",
		msg: "alias *c98 nests mappings and lists deeper than 100 levels (at line 4)",
	},
	{
		name: "billion laughs",
		yaml: laughs(),
		line: 9, col: 45, field: "x5[7]",
		msg: "aliases and merge keys bring more than 1000000 nodes into the file by here (through alias *a4)",
	},
	{
		name: "billion laughs by merge keys",
		yaml: mergeLaughs(),
		line: 20, col: 17, field: "x16.<<[0]",
		msg: "more than 1000000 nodes into the file by here (through merge key <<: *m15)",
	},
	{
		name: "nesting deeper than the limit (flow)",
		yaml: nested(150, false),
		line: 4, col: 110, field: "services[0][0][0][0][0]...[0][0][0]",
		msg: "mappings and lists nest deeper than 100 levels here",
	},
	{
		name: "nesting deeper than the limit (block)",
		yaml: nested(150, true),
		line: 104, col: 101, field: "services[0][0][0][0][0]...[0][0][0]",
		msg: "mappings and lists nest deeper than 100 levels here",
	},
	{
		name: "nesting deeper than the YAML decoder allows",
		yaml: nested(20000, false),
		line: 4, col: 1, msg: "invalid YAML: yaml: line 4: exceeded max depth of 10000",
	},
	{
		name: "binary garbage",
		yaml: string(func() []byte {
			b := make([]byte, 4096)
			for i := range b {
				b[i] = byte(i*7 + i/256)
			}
			return b
		}()),
		line: 1, col: 1, msg: "invalid YAML: yaml: control characters are not allowed (character U+0000)",
	},
	{
		name: "invalid UTF-8",
		yaml: hostileHead + "nodeName: caf\xe9\nmode: auto\n",
		line: 4, col: 14, msg: "invalid YAML: yaml: invalid trailing UTF-8 octet (byte 0xe9 starts no valid UTF-8 character)",
	},
	{
		name: "a control character",
		yaml: hostileHead + "services:\n  - name: \"a\x00\"\n",
		line: 5, col: 13, msg: "control characters are not allowed (character U+0000)",
	},
	{
		name: "unknown anchor",
		yaml: hostileHead + "services:\n  - name: a\n    ports: *ports\n",
		line: 6, col: 12, msg: "invalid YAML: yaml: unknown anchor 'ports' referenced",
	},
	{
		name: "a syntax error on the first line",
		yaml: "a: b: c\n",
		line: 1, col: 1, msg: "invalid YAML: yaml: mapping values are not allowed in this context",
	},
}

// TestHostileInput: every hostile input ends in one problem saying what, where and why, in
// little memory: nothing is expanded past the limits.
func TestHostileInput(t *testing.T) {
	for _, c := range hostileCases {
		t.Run(c.name, func(t *testing.T) {
			data := []byte(c.yaml)
			var err error
			alloc := allocated(func() { _, err = Parse("h.yaml", data) })
			var perr *Error
			if !errors.As(err, &perr) {
				t.Fatalf("Parse = %v (%T); want an *Error", err, err)
			}
			if len(perr.Problems) != 1 {
				t.Fatalf("%d problems, want 1:\n%v", len(perr.Problems), err)
			}
			p := perr.Problems[0]
			if p.File != "h.yaml" || p.Line != c.line || p.Column != c.col || p.Field != c.field || !strings.Contains(p.Message, c.msg) {
				t.Errorf("problem\n  %s\nwant\n  h.yaml:%d:%d: %s: ...%s...", p, c.line, c.col, c.field, c.msg)
			}
			// The YAML node tree of the file is the bulk of what may be allocated: about 200
			// bytes a byte of input at the worst. Nothing may grow with the expansion.
			if limit := uint64(1<<20 + 200*len(data)); alloc > limit {
				t.Errorf("Parse allocated %d bytes, want at most %d", alloc, limit)
			}
		})
	}
}

// allocated returns how many bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestLimitsAreExact: MaxDepth levels are read, one more is refused; so for MaxAliasNodes.
func TestLimitsAreExact(t *testing.T) {
	only := func(t *testing.T, data, msg string) {
		t.Helper()
		_, err := Parse("l.yaml", []byte(data))
		var perr *Error
		if !errors.As(err, &perr) || !strings.Contains(perr.Problems[0].Message, msg) {
			t.Errorf("err = %v; want first ...%s...", err, msg)
		}
	}
	// The document is one level, services a second: MaxDepth-1 lists under it.
	only(t, nested(MaxDepth-1, false), "must be a mapping, not a list")
	only(t, nested(MaxDepth, false), "nest deeper than 100 levels")
	only(t, nested(MaxDepth-1, true), "must be a mapping, not a list")
	only(t, nested(MaxDepth, true), "nest deeper than 100 levels")

	// An anchor of 999 nodes (a list of 998 scalars), then aliases of it: the document's own
	// nodes do not count, those of every alias do.
	expand := func(aliases int) string {
		return hostileHead + "x: &x [" + strings.TrimSuffix(strings.Repeat("1, ", 998), ", ") + "]\ny: [" +
			strings.TrimSuffix(strings.Repeat("*x, ", aliases), ", ") + "]\n"
	}
	only(t, expand(MaxAliasNodes/999), `unknown field "x"`)
	only(t, expand(MaxAliasNodes/999+1), "more than 1000000 nodes")
}

// TestFileSizeLimit: a file over MaxFileSize is refused with one problem naming both sizes,
// and Load does not read it: neither a large sparse file nor an endless device.
func TestFileSizeLimit(t *testing.T) {
	big := make([]byte, MaxFileSize+1)
	copy(big, hostileHead)
	_, err := Parse("big.yaml", big)
	want := "big.yaml:1:1: the file is 16777217 bytes, more than the 16777216 bytes (16 MiB) a config file may have: not read"
	if err == nil || err.Error() != want {
		t.Errorf("Parse(MaxFileSize+1 bytes) = %v\nwant %s", err, want)
	}
	if _, err := Parse("ok.yaml", big[:MaxFileSize]); err == nil || strings.Contains(err.Error(), "16 MiB") {
		t.Errorf("Parse(MaxFileSize bytes) = %v; want it read (and refused for its NUL bytes)", err)
	}

	path := filepath.Join(t.TempDir(), "huge.yaml")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil { // sparse: 100 MiB that take no disk
		t.Fatal(err)
	}
	f.Close()
	var cfg *Config
	alloc := allocated(func() { cfg, err = Load(path) })
	var perr *Error
	if cfg != nil || !errors.As(err, &perr) || len(perr.Problems) != 1 ||
		perr.Problems[0].String() != path+":1:1: the file is 104857600 bytes, more than the 16777216 bytes (16 MiB) a config file may have: not read" {
		t.Errorf("Load(100 MiB) = %v", err)
	}
	if alloc > 1<<20 {
		t.Errorf("Load(100 MiB) allocated %d bytes: it read the file", alloc)
	}

	if _, err := os.Stat("/dev/zero"); err == nil {
		_, err := ReadFile("/dev/zero")
		if !errors.As(err, &perr) || !strings.Contains(err.Error(), "/dev/zero:1:1: the file is larger than the 16777216 bytes") {
			t.Errorf("ReadFile(/dev/zero) = %v", err)
		}
	}
}

// TestManyProblems: a file of thousands of mistakes lists MaxProblems of them and says how
// many more there are; finding them costs no more than reading the file, even when they all
// sit in one mapping of a hundred thousand keys.
func TestManyProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString(hostileHead)
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&b, "k%d: 1\n", i)
	}
	data := []byte(b.String())
	var err error
	alloc := allocated(func() { _, err = Parse("many.yaml", data) })
	var perr *Error
	if !errors.As(err, &perr) || len(perr.Problems) != MaxProblems+1 {
		t.Fatalf("err has %d problems, want %d", len(perr.Problems), MaxProblems+1)
	}
	if p := perr.Problems[0]; p.String() != `many.yaml:4:1: k0: unknown field "k0"` {
		t.Errorf("first problem %s", p)
	}
	last := perr.Problems[MaxProblems]
	if want := `many.yaml:1004:1: 99000 more problem(s) not listed (at most 1000 are); the first of them: k1000: unknown field "k1000"`; last.String() != want {
		t.Errorf("last problem\n  %s\nwant\n  %s", last, want)
	}
	// Locating each problem by reading the whole mapping again would take gigabytes.
	if limit := uint64(200 * len(data)); alloc > limit {
		t.Errorf("Parse allocated %d bytes, want at most %d", alloc, limit)
	}
}

// TestAliasesWithinLimits: a large file that leans on anchors and merge keys (1,000 services
// merging the settings and the 100 endpoints of a first one: 720,000 nodes brought in by
// aliases) is read as before.
func TestAliasesWithinLimits(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nserviceCIDR: 10.96.0.0/12\nservices:\n")
	b.WriteString("  - &d\n    name: first\n    ports: [{port: 81}]\n    sessionAffinity: ClientIP\n    healthCheck: {type: tcp, intervalSeconds: 5}\n    endpoints:\n")
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, "      - {ip: 10.244.0.%d, zoneHints: [a, b]}\n", i+1)
	}
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&b, "  - {<<: *d, name: s%d, ports: [{port: 80}]}\n", i)
	}
	cfg, err := Parse("anchors.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := cfg.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Services) != 1001 || st.EndpointCount() != 1001*100 || st.Services[1000].AffinityTimeout == 0 {
		t.Errorf("services %d endpoints %d", len(st.Services), st.EndpointCount())
	}
}

// TestHostileReloadKeepsLastGood: refusing a hostile file leaves a config parsed before it
// whole (nothing is shared between parses): what the daemon keeps programmed on a refused
// reload builds the same state as before.
func TestHostileReloadKeepsLastGood(t *testing.T) {
	good, err := Parse("c.yaml", bigFile(50))
	if err != nil {
		t.Fatal(err)
	}
	before, err := good.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range hostileCases {
		if cfg, err := Parse("c.yaml", []byte(c.yaml)); cfg != nil || err == nil {
			t.Fatalf("%s: accepted", c.name)
		}
	}
	after, err := good.BuildState("n", nil, NewMemAllocator())
	if err != nil {
		t.Fatal(err)
	}
	if render(before) != render(after) {
		t.Error("the last good config builds another state after hostile files were refused")
	}
}
