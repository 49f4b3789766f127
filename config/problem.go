package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong in a config file, located as precisely as the file allows.
type Problem struct {
	File   string
	Line   int // 1-based; 0 when unknown
	Column int // 1-based; 0 when unknown
	// Field is the path of the offending field inside its YAML document, e.g.
	// "services[1].ports[0].nodePort" or "spec.clusterIP"; "" for the document itself.
	Field   string
	Message string
}

// String renders p as "FILE:LINE:COL: field: message" (the field part is left out when empty).
func (p Problem) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s:%d:%d: ", p.File, p.Line, p.Column)
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error is every problem found in one config file. Load and Parse return it (as error) when
// the content is invalid; use errors.As to get at the problems.
type Error struct {
	Problems []Problem
}

// Error renders every problem, one per line, in file order.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// sortProblems orders problems by position, keeping the order of discovery for equal ones.
func sortProblems(ps *[]Problem) {
	out := *ps
	sort.SliceStable(out, func(i, j int) bool {
		ps := out
		if ps[i].File != ps[j].File {
			return ps[i].File < ps[j].File
		}
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		return ps[i].Column < ps[j].Column
	})
}

// problemList collects the problems of one file: MaxProblems of them, then only how many
// more there are and the first of those, so that a file of a million mistakes costs neither
// a million problems' memory nor the time to locate them.
type problemList struct {
	list []Problem
	more int     // problems found past MaxProblems
	next Problem // the first of them
}

func (l *problemList) full() bool { return len(l.list) >= MaxProblems }

func (l *problemList) add(p Problem) {
	if l.full() {
		if l.more == 0 {
			l.next = p
		}
		l.more++
		return
	}
	l.list = append(l.list, p)
}

func (l *problemList) empty() bool { return len(l.list) == 0 }

// error returns the problems in file order, and last, when some were left out, one that
// says how many.
func (l *problemList) error() *Error {
	sortProblems(&l.list)
	out := l.list
	if l.more > 0 {
		first := l.next.Message
		if l.next.Field != "" {
			first = l.next.Field + ": " + first
		}
		out = append(out, Problem{File: l.next.File, Line: l.next.Line, Column: l.next.Column,
			Message: fmt.Sprintf("%d more problem(s) not listed (at most %d are); the first of them: %s", l.more, MaxProblems, first)})
	}
	return &Error{Problems: out}
}

// pos is a position in the file.
type pos struct{ line, col int }

// doc is one YAML document of the file being checked: where its fields are, and where its
// problems go.
type doc struct {
	file  string
	index int // 0-based document index
	start pos
	kind  string
	// pre holds the positions of apiVersion and kind recorded before the document is read
	// against its Go type (the last occurrence of each, as the dispatch saw them).
	pre []prePos
	// root and typ are the document's node tree and the Go type it was read against (set by
	// decodeNode): where finds positions from them only when a problem needs one, so that
	// reading a valid file records no position at all.
	root *yaml.Node
	typ  reflect.Type
	// kept holds, once the file was read without problems and root let go, the positions of
	// the paths BuildState may report at (see keepPositions).
	kept map[string]pos
	// keys holds the key indexes of the large mappings where looked into (see keyIndex).
	keys  map[*yaml.Node]*keyIndex
	probs *problemList
	// bad holds the paths whose value the reader refused: later checks that find the value
	// missing or zero do not report it again.
	bad map[string]bool
	// fields caches the json fields of struct types, shared by the documents of one file.
	fields map[reflect.Type]map[string]field
	// fast caches how the direct reader sees struct types, shared by the documents of one file.
	fast fastCache
	// validNames holds the names checkName found valid, shared by the documents of one file.
	validNames map[validName]bool
}

// prePos is a position recorded before the document was read against its type.
type prePos struct {
	path string
	at   pos
}

// positions returns the positions of path and of its ancestors: the position of a field's key
// (or, for a sequence item, of the item) by field path ("services[0].ports[1].port"), as the
// reader met them. Before the document is read against its type, only apiVersion and kind are
// known.
func (d *doc) positions(path string) map[string]pos {
	at := map[string]pos{}
	if d.typ == nil {
		for _, p := range d.pre {
			at[p.path] = p.at
		}
		return at
	}
	if d.root == nil {
		return d.kept
	}
	d.record(d.root, d.typ, "", wantPath(path), at)
	return at
}

// keepPositions records the positions of paths (and of their ancestors), then lets go of the
// node tree: where answers for those paths from then on, and for others as if they were not
// in the file. The config of a large file then does not hold its whole node tree.
func (d *doc) keepPositions(paths []string) {
	if d.typ == nil || d.root == nil {
		return
	}
	w := wantSet{}
	for _, p := range paths {
		w.add(p)
	}
	d.kept = map[string]pos{}
	if len(w) > 0 {
		d.record(d.root, d.typ, "", w, d.kept)
	}
	d.root, d.keys = nil, nil
}

// where returns the position of path, or of its nearest recorded ancestor.
func (d *doc) where(path string) pos {
	at := d.positions(path)
	for p := path; ; {
		if a, ok := at[p]; ok {
			return a
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			return d.start
		}
		p = p[:i]
	}
}

// refused reports whether the reader refused the value at path or at one of its ancestors.
func (d *doc) refused(path string) bool {
	for p := path; p != ""; {
		if d.bad[p] {
			return true
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			return false
		}
		p = p[:i]
	}
	return false
}

// addf records a problem at path, unless the reader already refused the value there.
func (d *doc) addf(path, format string, args ...any) {
	if d.refused(path) {
		return
	}
	if d.probs.full() && d.probs.more > 0 {
		d.probs.more++ // not listed: not worth locating
		return
	}
	at := d.where(path)
	d.probs.add(Problem{File: d.file, Line: at.line, Column: at.col, Field: path, Message: fmt.Sprintf(format, args...)})
}

// addAt records a problem about path at an explicit position.
func (d *doc) addAt(at pos, path, format string, args ...any) {
	if d.refused(path) {
		return
	}
	if d.probs.full() && d.probs.more > 0 {
		d.probs.more++
		return
	}
	d.probs.add(Problem{File: d.file, Line: at.line, Column: at.col, Field: path, Message: fmt.Sprintf(format, args...)})
}

// line returns the line of path, for messages that point at another definition.
func (d *doc) line(path string) int { return d.where(path).line }

func join(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "." + child
}

func index(parent string, i int) string { return parent + "[" + strconv.Itoa(i) + "]" }

// refuse records a problem at path found while reading the value, and marks path bad.
func (d *doc) refuse(path, format string, args ...any) {
	d.addf(path, format, args...)
	if d.bad == nil {
		d.bad = map[string]bool{}
	}
	d.bad[path] = true
}
