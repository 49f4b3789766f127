package config

import (
	"errors"
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

// hostileCases are inputs the parser once failed on (it crashed, hung, ran out of memory or
// gave no line), with the one problem each must now end in.
var hostileCases = []struct {
	name       string
	yaml       string
	line, col  int
	field, msg string
}{
	{
		name: "nesting deeper than the YAML decoder allows",
		yaml: hostileHead + "services: " + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + "\n",
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
		line: 4, col: 14, msg: "invalid YAML: yaml: invalid trailing UTF-8 octet (byte 0xe9 is not UTF-8)",
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
