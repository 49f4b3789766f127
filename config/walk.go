package config

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The walker reads a YAML node tree against a Go type (described by its json tags, as the
// Kubernetes API types are), so that every unknown field and every mistyped value is reported
// with its line, at any depth, instead of only the first as a decoder would. It returns a
// generic value (maps, slices, scalars) that encoding/json then decodes into the type; it also
// records where each field was, so later checks can point at it.
//
// Every reader of a document's node tree here (walk, record, pairs, the direct reader) follows
// aliases and merge keys without counting: it reads only trees nodeCheck (limits.go) accepted,
// which have no cycle, nest at most MaxDepth deep and bring at most MaxAliasNodes nodes in
// through aliases.

var (
	intOrStringType   = reflect.TypeOf(intstr.IntOrString{})
	jsonUnmarshalType = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()
)

// decodeNode reads n into out (a pointer to a struct with json tags), recording problems in d:
// with the direct reader (fastdecode.go) when n is valid, else with the walker. Fields with
// problems are left out, so that the rest can still be checked. It reports false only when
// nothing could be decoded.
func decodeNode(d *doc, n *yaml.Node, out any) bool {
	d.root, d.typ = n, reflect.TypeOf(out).Elem()
	rv := reflect.ValueOf(out).Elem()
	if fastDecode(d.fast, n, rv) {
		return true
	}
	rv.SetZero() // start over: the walker reports what the direct reader gave up on
	v := walk(d, n, d.typ, "")
	if v == nil {
		return false
	}
	b, err := json.Marshal(v)
	if err == nil {
		err = json.Unmarshal(b, out)
	}
	if err != nil {
		d.addf("", "cannot decode %s: %v", d.kind, err)
		return false
	}
	return true
}

func nodeKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!str" {
			return fmt.Sprintf("the string %q", n.Value)
		}
		return n.Value
	}
	return "something else"
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// walk converts n to a generic value that encodes, as JSON, into type t. Problems are recorded
// at path; the returned value is nil when n cannot be converted.
func walk(d *doc, n *yaml.Node, t reflect.Type, path string) any {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == intOrStringType:
		if n.Kind != yaml.ScalarNode {
			d.refuse(path, "must be a number or a name, not %s", nodeKind(n))
			return nil
		}
		if n.Tag == "!!int" {
			return walkInt(d, n, reflect.TypeOf(int32(0)), path)
		}
		return n.Value
	case reflect.PointerTo(t).Implements(jsonUnmarshalType):
		var v any
		if err := n.Decode(&v); err != nil {
			d.refuse(path, "%v", err)
			return nil
		}
		b, err := json.Marshal(jsonable(v))
		if err == nil {
			err = json.Unmarshal(b, reflect.New(t).Interface())
		}
		if err != nil {
			d.refuse(path, "invalid value: %v", err)
			return nil
		}
		return jsonable(v)
	}
	switch t.Kind() {
	case reflect.Struct:
		return walkStruct(d, n, t, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.refuse(path, "must be a mapping, not %s", nodeKind(n))
			return nil
		}
		out := map[string]any{}
		for _, kv := range pairs(n) {
			k, v := kv[0], kv[1]
			kp := join(path, k.Value)
			if _, dup := out[k.Value]; dup {
				d.addAt(pos{k.Line, k.Column}, kp, "key %q given twice (first at line %d)", k.Value, d.line(kp))
				continue
			}
			if k.Kind != yaml.ScalarNode {
				d.refuse(kp, "keys must be strings")
				continue
			}
			out[k.Value] = walk(d, v, t.Elem(), kp)
		}
		return out
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			d.refuse(path, "must be a list, not %s", nodeKind(n))
			return nil
		}
		out := make([]any, 0, len(n.Content))
		for i, item := range n.Content {
			ip := index(path, i)
			out = append(out, walk(d, item, t.Elem(), ip))
		}
		return out
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.refuse(path, "must be a string, not %s", nodeKind(n))
			return nil
		}
		return n.Value
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || n.Decode(&b) != nil {
			d.refuse(path, "must be true or false, not %s", nodeKind(n))
			return nil
		}
		return b
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return walkInt(d, n, t, path)
	case reflect.Float32, reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || n.Decode(&f) != nil {
			d.refuse(path, "must be a number, not %s", nodeKind(n))
			return nil
		}
		return f
	case reflect.Interface:
		var v any
		if err := n.Decode(&v); err != nil {
			d.refuse(path, "%v", err)
			return nil
		}
		return jsonable(v)
	}
	d.refuse(path, "cannot read a value of Go type %s", t)
	return nil
}

func walkInt(d *doc, n *yaml.Node, t reflect.Type, path string) any {
	var i int64
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || n.Decode(&i) != nil {
		d.refuse(path, "must be an integer, not %s", nodeKind(n))
		return nil
	}
	lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
	switch t.Kind() {
	case reflect.Int8, reflect.Int16, reflect.Int32:
		hi = int64(1)<<(t.Bits()-1) - 1
		lo = -hi - 1
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		lo, hi = 0, int64(1)<<t.Bits()-1
	case reflect.Uint, reflect.Uint64:
		lo = 0
	}
	if i < lo || i > hi {
		d.refuse(path, "%d is out of range [%d, %d]", i, lo, hi)
		return nil
	}
	return i
}

// field describes one json field of a struct type.
type field struct {
	typ reflect.Type
}

func jsonFields(t reflect.Type, out map[string]field) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" && opts == "" {
			continue
		}
		ft := f.Type
		if f.Anonymous && name == "" || strings.Contains(","+opts+",", ",inline,") && name == "" {
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				jsonFields(ft, out)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = field{typ: ft}
	}
}

func walkStruct(d *doc, n *yaml.Node, t reflect.Type, path string) any {
	if n.Kind != yaml.MappingNode {
		d.refuse(path, "must be a mapping, not %s", nodeKind(n))
		return nil
	}
	fields := d.structFields(t)
	out := map[string]any{}
	seen := map[string]bool{}
	for _, kv := range pairs(n) {
		k, v := kv[0], kv[1]
		kp := join(path, k.Value)
		if seen[k.Value] {
			d.addAt(pos{k.Line, k.Column}, kp, "field %q given twice (first at line %d)", k.Value, d.line(kp))
			continue
		}
		seen[k.Value] = true
		f, ok := fields[k.Value]
		if !ok || k.Kind != yaml.ScalarNode {
			d.refuse(kp, "unknown field %q%s", k.Value, suggest(k.Value, fields))
			continue
		}
		if val := walk(d, v, f.typ, kp); val != nil {
			out[k.Value] = val
		}
	}
	return out
}

// structFields returns the json fields of struct type t, from the file's cache.
func (d *doc) structFields(t reflect.Type) map[string]field {
	fields, ok := d.fields[t]
	if !ok {
		fields = map[string]field{}
		jsonFields(t, fields)
		if d.fields == nil {
			d.fields = map[reflect.Type]map[string]field{}
		}
		d.fields[t] = fields
	}
	return fields
}

// wanted says which paths record looks at: the paths asked for and their ancestors.
type wanted interface {
	// key reports whether join(path, key) is wanted.
	key(path, key string) bool
	// items returns the indexes below n of the wanted items of the sequence at path, in order.
	items(path string, n int) []int
}

// record adds to at the positions the walker meets in n (read as type t at path) at the paths
// w wants: a field's or map key's position at its path, a sequence item's at its index path.
// It goes as walk does (aliases and merge keys followed, a repeated key kept at its first
// occurrence, nothing below a value walk does not enter), but only down the wanted branches,
// so that locating a problem costs one walk down one branch.
func (d *doc) record(n *yaml.Node, t reflect.Type, path string, w wanted, at map[string]pos) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == intOrStringType || reflect.PointerTo(t).Implements(jsonUnmarshalType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return
		}
		fields := d.structFields(t)
		for _, kv := range d.wantedPairs(n, path, w, false) {
			k, v := kv[0], kv[1]
			kp := join(path, k.Value)
			at[kp] = pos{k.Line, k.Column}
			if f, ok := fields[k.Value]; ok && k.Kind == yaml.ScalarNode {
				d.record(v, f.typ, kp, w, at)
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return
		}
		for _, kv := range d.wantedPairs(n, path, w, true) {
			k, v := kv[0], kv[1]
			kp := join(path, k.Value)
			at[kp] = pos{k.Line, k.Column}
			if k.Kind == yaml.ScalarNode {
				d.record(v, t.Elem(), kp, w, at)
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return
		}
		for _, i := range w.items(path, len(n.Content)) {
			item := n.Content[i]
			ip := index(path, i)
			at[ip] = pos{item.Line, item.Column}
			d.record(item, t.Elem(), ip, w, at)
		}
	}
}

// wantedPairs returns the pairs of mapping n (merge keys expanded) that record acts on at
// path, in order: for a struct, the first pair of each wanted key; for a map (asMap), the
// pairs of each wanted key up to the first one whose key node is a scalar (a later pair of the
// key is left out). When only one path is wanted, a large mapping is looked into through its
// key index instead of being read whole: where then costs the same in a mapping of a million
// keys as in one of ten.
func (d *doc) wantedPairs(n *yaml.Node, path string, w wanted, asMap bool) [][2]*yaml.Node {
	if wp, ok := w.(wantPath); ok && (len(n.Content) > 2*indexAbove || hasMerge(n)) {
		return d.keyIndex(n).wanted(wp, path, asMap)
	}
	var out [][2]*yaml.Node
	var seen []string
	for _, kv := range pairs(n) {
		k := kv[0]
		if !w.key(path, k.Value) || slices.Contains(seen, k.Value) {
			continue
		}
		out = append(out, kv)
		if !asMap || k.Kind == yaml.ScalarNode {
			seen = append(seen, k.Value)
		}
	}
	return out
}

// indexAbove is the number of pairs above which a mapping gets a key index.
const indexAbove = 32

func hasMerge(n *yaml.Node) bool {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			return true
		}
	}
	return false
}

// keyIndex is where the keys of a mapping are among its pairs (merge keys expanded), built
// once per mapping the document looks into.
type keyIndex struct {
	kv    [][2]*yaml.Node
	first map[string]int32 // the first pair of each key
	// asMap holds, for the keys whose first pair has a key node that is no scalar, the pair a
	// map's record ends on: the first pair of the key whose key node is a scalar, else the
	// last pair of the key. (Every other key ends on its first pair.)
	asMap map[string]int32
}

func (d *doc) keyIndex(n *yaml.Node) *keyIndex {
	if x, ok := d.keys[n]; ok {
		return x
	}
	ps := pairs(n)
	x := &keyIndex{kv: ps, first: make(map[string]int32, len(ps))}
	for i, kv := range ps {
		k := kv[0].Value
		f, seen := x.first[k]
		if !seen {
			x.first[k] = int32(i)
			continue
		}
		if ps[f][0].Kind == yaml.ScalarNode {
			continue
		}
		if e, ok := x.asMap[k]; ok && ps[e][0].Kind == yaml.ScalarNode {
			continue
		}
		if x.asMap == nil {
			x.asMap = map[string]int32{}
		}
		x.asMap[k] = int32(i)
	}
	if d.keys == nil {
		d.keys = map[*yaml.Node]*keyIndex{}
	}
	d.keys[n] = x
	return x
}

// wanted returns what wantedPairs does, for one wanted path. The keys w wants at path are the
// prefixes of the rest of w that end where a field name may (a key may hold dots: a label);
// each one's pair is the one record ends on, and they go in pair order, as record met them.
// (A map's key whose pairs are not all of scalar key nodes then leaves out the pairs record
// would have met before the one it ends on: they only set the position that one sets again.)
func (x *keyIndex) wanted(w wantPath, path string, asMap bool) [][2]*yaml.Node {
	rest := string(w)
	if path != "" {
		if len(rest) <= len(path) || !strings.HasPrefix(rest, path) || rest[len(path)] != '.' {
			return nil
		}
		rest = rest[len(path)+1:]
	}
	var at []int32
	for i := 0; i <= len(rest); i++ {
		if i < len(rest) && rest[i] != '.' && rest[i] != '[' {
			continue
		}
		k := rest[:i]
		j, ok := x.first[k]
		if !ok {
			continue
		}
		if e, ok := x.asMap[k]; ok && asMap {
			j = e
		}
		at = append(at, j)
	}
	slices.Sort(at)
	out := make([][2]*yaml.Node, len(at))
	for i, j := range at {
		out[i] = x.kv[j]
	}
	return out
}

// wantPath wants one path and its ancestors (those where looks up for it).
type wantPath string

func (w wantPath) key(path, key string) bool {
	want := string(w)
	if path != "" {
		if len(want) <= len(path) || !strings.HasPrefix(want, path) || want[len(path)] != '.' {
			return false
		}
		want = want[len(path)+1:]
	}
	return strings.HasPrefix(want, key) && (len(want) == len(key) || want[len(key)] == '.' || want[len(key)] == '[')
}

// itemIndex returns the index of the item of the sequence at path that w is or is below, or -1.
func (w wantPath) itemIndex(path string) int {
	want := string(w)
	if !strings.HasPrefix(want, path+"[") {
		return -1
	}
	rest := want[len(path)+1:]
	j := strings.IndexByte(rest, ']')
	if j < 0 {
		return -1
	}
	i, err := strconv.Atoi(rest[:j])
	if err != nil || i < 0 || strconv.Itoa(i) != rest[:j] {
		return -1
	}
	return i
}

func (w wantPath) items(path string, n int) []int {
	if i := w.itemIndex(path); i >= 0 && i < n {
		return []int{i}
	}
	return nil
}

// wantSet wants every path it holds; add puts a path in with its ancestors.
type wantSet map[string]bool

func (w wantSet) add(path string) {
	for p := path; ; {
		w[p] = true
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			return
		}
		p = p[:i]
	}
}

func (w wantSet) key(path, key string) bool {
	if path == "" {
		return w[key]
	}
	return w[path+"."+key]
}

func (w wantSet) items(path string, n int) []int {
	if !w[path] && path != "" {
		return nil
	}
	var out []int
	for i := 0; i < n; i++ {
		if w[index(path, i)] {
			out = append(out, i)
		}
	}
	return out
}

// suggest returns ` (did you mean "x"?)` when a known field differs from name only in case.
func suggest(name string, fields map[string]field) string {
	for k := range fields {
		if strings.EqualFold(k, name) {
			return fmt.Sprintf(" (did you mean %q?)", k)
		}
	}
	return ""
}

// jsonable turns what yaml decodes into interface{} into something encoding/json accepts
// (maps with non-string keys are not).
func jsonable(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = jsonable(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = jsonable(e)
		}
		return x
	}
	return v
}

// pairs returns the key/value pairs of mapping n with YAML merge keys (`<<: *anchor`)
// expanded: a merged pair is kept only when n does not set its key itself.
func pairs(n *yaml.Node) [][2]*yaml.Node {
	var own, merged [][2]*yaml.Node
	set := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			srcs := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, src := range srcs {
				for src.Kind == yaml.AliasNode && src.Alias != nil {
					src = src.Alias
				}
				if src.Kind == yaml.MappingNode {
					merged = append(merged, pairs(src)...)
				}
			}
			continue
		}
		own = append(own, [2]*yaml.Node{k, v})
		set[k.Value] = true
	}
	for _, kv := range merged {
		if !set[kv[0].Value] {
			set[kv[0].Value] = true
			own = append(own, kv)
		}
	}
	return own
}
