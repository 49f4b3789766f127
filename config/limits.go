package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Limits on what a config file may hold, so that any input (a file caught half-written, binary
// garbage, a hostile one) ends in problems within bounded time and memory instead of taking
// the process down: `svcproxy check`, a reload and a start all read the file through Parse.
// docs/config.md ("Limits") and docs/reliability.md ("Hostile config input") explain them.
const (
	// MaxFileSize is the largest config file read, in bytes: 16 MiB (the 10,000-service
	// benchmark file is 8.8 MB).
	MaxFileSize = 16 << 20
	// MaxDepth is how deeply mappings and sequences may nest in a document, aliases followed
	// (a ProxyConfig needs 5 levels, a Kubernetes object with managedFields about 15).
	MaxDepth = 100
	// MaxAliasNodes is how many YAML nodes aliases (merge keys included) may bring into one
	// file: a node counts each time an alias brings it in, so an exponential expansion
	// ("billion laughs") is refused after this many.
	MaxAliasNodes = 1_000_000
	// MaxProblems is how many problems a file's check lists; the ones past it are counted, in
	// one last problem.
	MaxProblems = 1000
)

// ReadFile reads the config file at path, at most MaxFileSize bytes of it: a larger file (or
// an endless one, a device) is refused with an *Error without being read whole. Other
// failures are returned as they are.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	if size > MaxFileSize {
		return nil, &Error{Problems: []Problem{tooBig(path, size)}}
	}
	var buf bytes.Buffer
	if size >= 0 {
		buf.Grow(int(size) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileSize+1)); err != nil {
		return nil, err
	}
	if buf.Len() > MaxFileSize {
		if size <= MaxFileSize {
			size = -1 // grew while read, or not a regular file
		}
		return nil, &Error{Problems: []Problem{tooBig(path, size)}}
	}
	return buf.Bytes(), nil
}

// tooBig is the problem of a file over MaxFileSize; size is -1 when unknown.
func tooBig(file string, size int64) Problem {
	what := "the file is larger than"
	if size >= 0 {
		what = fmt.Sprintf("the file is %d bytes, more than", size)
	}
	return Problem{File: file, Line: 1, Column: 1,
		Message: fmt.Sprintf("%s the %d bytes (16 MiB) a config file may have: not read", what, MaxFileSize)}
}

var (
	yamlLine      = regexp.MustCompile(`line (\d+)`)
	unknownAnchor = regexp.MustCompile(`unknown anchor '(.*)' referenced`)
)

// yamlProblem turns an error of the YAML decoder into a problem at the line the error names.
// The decoder leaves the line out of errors on the first line, of errors about the characters
// of the file and of unknown anchors: those are located here.
func yamlProblem(file string, data []byte, err error) Problem {
	msg := err.Error()
	at := pos{0, 1}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		at.line, _ = strconv.Atoi(m[1])
	}
	if at.line <= 0 {
		at.line = 1
		switch {
		case strings.Contains(msg, "control characters are not allowed"), strings.Contains(msg, "UTF-8"):
			if off, r, ok := badChar(data); ok {
				at = offsetPos(data, off)
				if r == utf8.RuneError {
					msg += fmt.Sprintf(" (byte 0x%02x starts no valid UTF-8 character)", data[off])
				} else {
					msg += fmt.Sprintf(" (character %U)", r)
				}
			}
		default:
			if m := unknownAnchor.FindStringSubmatch(msg); m != nil {
				if off, ok := findAlias(data, m[1]); ok {
					at = offsetPos(data, off)
				}
			}
		}
	}
	return Problem{File: file, Line: at.line, Column: at.col, Message: "invalid YAML: " + msg}
}

// badChar returns the offset of the first character of data the YAML reader refuses (invalid
// UTF-8, or a control character), and the character (utf8.RuneError for invalid UTF-8).
func badChar(data []byte) (int, rune, bool) {
	for off := 0; off < len(data); {
		r, n := utf8.DecodeRune(data[off:])
		switch {
		case r == utf8.RuneError && n <= 1:
			return off, r, true
		case r == 0x09 || r == 0x0A || r == 0x0D || (r >= 0x20 && r <= 0x7E) || r == 0x85 ||
			(r >= 0xA0 && r <= 0xD7FF) || (r >= 0xE000 && r <= 0xFFFD) || (r >= 0x10000 && r <= 0x10FFFF):
		default:
			return off, r, true
		}
		off += n
	}
	return 0, 0, false
}

// findAlias returns the offset of the first alias `*name` in data (a best guess: it may be in
// a comment or a quoted string).
func findAlias(data []byte, name string) (int, bool) {
	needle := []byte("*" + name)
	for from := 0; ; {
		i := bytes.Index(data[from:], needle)
		if i < 0 {
			return 0, false
		}
		i += from
		end := i + len(needle)
		before := i == 0 || strings.IndexByte(" \t\r\n[{,", data[i-1]) >= 0
		after := end == len(data) || strings.IndexByte(" \t\r\n]},", data[end]) >= 0
		if before && after {
			return i, true
		}
		from = i + 1
	}
}

// offsetPos returns the line and column (1-based, in characters, as the YAML decoder counts
// them) of byte offset off of data.
func offsetPos(data []byte, off int) pos {
	line, start := 1, 0
	for i := 0; i < off; i++ {
		if data[i] == '\n' || (data[i] == '\r' && (i+1 >= len(data) || data[i+1] != '\n')) {
			line, start = line+1, i+1
		}
	}
	return pos{line, utf8.RuneCount(data[start:off]) + 1}
}

// nodeCheck walks each document's node tree once, aliases and merge keys followed, before
// anything else reads it, and refuses a tree that would not end or would be too large when
// followed: an alias or merge key inside the node it refers to (a cycle), nesting deeper than
// MaxDepth, more than MaxAliasNodes nodes brought in by aliases in the file. Every reader of
// the tree after it (the direct reader, the walker, record, pairs, yaml's own Decode of a
// value) follows aliases and merge keys the same way, so what it accepts they read in bounded
// time, depth and memory. It keeps nothing per node: its memory is its path (at most MaxDepth
// steps) and the anchored nodes on it.
type nodeCheck struct {
	file     string
	expanded int                 // nodes brought in by aliases so far, in the whole file
	onPath   map[*yaml.Node]bool // the anchored collections the walk is inside
	path     []step              // where the walk is
	outer    *yaml.Node          // the outermost alias being followed, nil when none
	outerAt  int                 // len(path) at outer
	prob     *Problem
}

// step is one step of the walk: into the value (or key) of a mapping pair, or a sequence item.
type step struct {
	key   *yaml.Node // the pair's key node; nil for a sequence item
	index int
}

// check walks the tree of one document; it returns false, with c.prob set, when it refuses it.
func (c *nodeCheck) check(root *yaml.Node) bool {
	if c.onPath == nil {
		c.onPath = map[*yaml.Node]bool{}
	}
	c.path, c.outer = c.path[:0], nil
	return c.visit(root, 0)
}

// visit walks n, inside depth collections.
func (c *nodeCheck) visit(n *yaml.Node, depth int) bool {
	if n.Kind == yaml.AliasNode {
		t := n.Alias
		if t == nil {
			return true
		}
		if c.onPath[t] {
			if c.mergeValue() {
				c.fail(n, fmt.Sprintf("merge key <<: *%s merges the mapping &%s (line %d) that holds it: the mapping would contain itself without end", n.Value, t.Anchor, t.Line))
			} else {
				c.fail(n, fmt.Sprintf("alias *%s refers to &%s (line %d), which contains it: the value would contain itself without end", n.Value, t.Anchor, t.Line))
			}
			return false
		}
		if c.outer != nil {
			return c.visit(t, depth)
		}
		c.outer, c.outerAt = n, len(c.path)
		ok := c.visit(t, depth)
		c.outer = nil
		return ok
	}
	if c.outer != nil {
		c.expanded++
		if c.expanded > MaxAliasNodes {
			c.failOuter(fmt.Sprintf("aliases and merge keys bring more than %d nodes into the file by here (through %s): at most %d may come from aliases (an exponential expansion?)",
				MaxAliasNodes, c.aliasName(c.outer, c.outerAt), MaxAliasNodes))
			return false
		}
	}
	if n.Kind != yaml.MappingNode && n.Kind != yaml.SequenceNode {
		return true
	}
	if depth >= MaxDepth {
		if c.outer != nil {
			c.failOuter(fmt.Sprintf("%s nests mappings and lists deeper than %d levels (at line %d): at most %d are allowed",
				c.aliasName(c.outer, c.outerAt), MaxDepth, n.Line, MaxDepth))
		} else {
			c.fail(n, fmt.Sprintf("mappings and lists nest deeper than %d levels here: at most %d are allowed", MaxDepth, MaxDepth))
		}
		return false
	}
	if n.Anchor != "" {
		c.onPath[n] = true
		defer delete(c.onPath, n)
	}
	for i, child := range n.Content {
		s := step{index: i}
		if n.Kind == yaml.MappingNode {
			s = step{key: n.Content[i&^1]}
		}
		c.path = append(c.path, s)
		ok := c.visit(child, depth+1)
		c.path = c.path[:len(c.path)-1]
		if !ok {
			return false
		}
	}
	return true
}

// mergeValue reports whether the walk is at the value of a merge key, or at an item of it.
func (c *nodeCheck) mergeValue() bool {
	n := len(c.path)
	if n > 1 && c.path[n-1].key == nil {
		n-- // an item of a list of merged mappings
	}
	if n == 0 {
		return false
	}
	k := c.path[n-1].key
	return k != nil && k.Kind == yaml.ScalarNode && k.Tag == "!!merge"
}

// aliasName names alias a, met at the path's first n steps: "alias *x" or "merge key <<: *x".
func (c *nodeCheck) aliasName(a *yaml.Node, n int) string {
	saved := c.path
	c.path = c.path[:n]
	merge := c.mergeValue()
	c.path = saved
	if merge {
		return "merge key <<: *" + a.Value
	}
	return "alias *" + a.Value
}

// fail refuses the document with a problem at n, at the current path.
func (c *nodeCheck) fail(n *yaml.Node, msg string) {
	c.prob = &Problem{File: c.file, Line: n.Line, Column: n.Column, Field: fieldPath(c.path), Message: msg}
}

// failOuter refuses the document with a problem at the outermost alias being followed.
func (c *nodeCheck) failOuter(msg string) {
	c.prob = &Problem{File: c.file, Line: c.outer.Line, Column: c.outer.Column, Field: fieldPath(c.path[:c.outerAt]), Message: msg}
}

// fieldPath renders a path as the walker names fields ("services[0].ports[1]"), its middle
// left out when it is long.
func fieldPath(path []step) string {
	const head, tail = 6, 3
	var b strings.Builder
	sep := false // a key needs a dot before it
	for i, s := range path {
		if len(path) > head+tail && i >= head && i < len(path)-tail {
			if i == head {
				b.WriteString("...")
				sep = false
			}
			continue
		}
		if s.key == nil {
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
			sep = true
			continue
		}
		if sep {
			b.WriteByte('.')
		}
		sep = true
		k := s.key
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind == yaml.ScalarNode {
			b.WriteString(k.Value)
		} else {
			b.WriteString("?")
		}
	}
	return b.String()
}
