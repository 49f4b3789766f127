package config

import (
	"encoding"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The direct reader: a valid document is read straight from its node tree into the typed value
// (the json fields of its types, as the walker sees them), without the walker's generic value
// and the JSON round trip. It gives up at the first thing that is not plainly valid (anything
// the walker would report, and any Go type whose JSON decoding it does not mirror exactly);
// decodeNode then starts over with the walker, which reports the problems. Problems are rare,
// so nearly every document is read only once, and only by this reader.

var textUnmarshalerType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()

// fastStruct is how the direct reader sees a struct type.
type fastStruct struct {
	ok     bool           // the reader handles the type's fields as encoding/json does
	names  map[string]int // json name -> index in fields
	fields []fastField
}

type fastField struct {
	index []int // reflect field index path (through embedded structs)
	typ   reflect.Type
}

// fastCache holds the fastStruct of each struct type met in one file.
type fastCache map[reflect.Type]*fastStruct

func (c fastCache) get(t reflect.Type) *fastStruct {
	if fs, ok := c[t]; ok {
		return fs
	}
	fs := &fastStruct{ok: true, names: map[string]int{}}
	fs.collect(t, nil)
	c[t] = fs
	return fs
}

// collect adds the json fields of t (below the index path at). It marks the struct unsupported
// where the walker's view of the fields (jsonFields) could differ from encoding/json's: a name
// given twice, an inline tag on a named field, embedded pointers, the ",string" option.
func (fs *fastStruct) collect(t reflect.Type, at []int) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" && opts == "" {
			continue
		}
		if strings.Contains(","+opts+",", ",string,") {
			fs.ok = false
		}
		idx := append(append([]int(nil), at...), i)
		if f.Anonymous && name == "" {
			if f.Type.Kind() == reflect.Struct {
				fs.collect(f.Type, idx)
				continue
			}
			if f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct {
				fs.ok = false
				continue
			}
		}
		if strings.Contains(","+opts+",", ",inline,") && name == "" {
			fs.ok = false // the walker flattens it, encoding/json does not
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, dup := fs.names[name]; dup {
			fs.ok = false
		}
		fs.names[name] = len(fs.fields)
		fs.fields = append(fs.fields, fastField{index: idx, typ: f.Type})
	}
}

// fastDecode reads n into v (settable, holding its zero value) as walk and encoding/json would
// together; it reports false when it gave up (v is then partly set).
func fastDecode(c fastCache, n *yaml.Node, v reflect.Value) bool {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return true // walk leaves the field out: it stays zero
	}
	t := v.Type()
	if t.Kind() == reflect.Pointer {
		e := reflect.New(t.Elem())
		if !fastDecode(c, n, e.Elem()) {
			return false
		}
		v.Set(e)
		return true
	}
	switch {
	case t == intOrStringType:
		if n.Kind != yaml.ScalarNode {
			return false
		}
		if n.Tag == "!!int" {
			i, ok := fastInt(n, reflect.Int32)
			if !ok {
				return false
			}
			v.Set(reflect.ValueOf(intstr.IntOrString{Type: intstr.Int, IntVal: int32(i)}))
			return true
		}
		if !utf8.ValidString(n.Value) {
			return false // encoding/json would replace the invalid bytes
		}
		v.Set(reflect.ValueOf(intstr.IntOrString{Type: intstr.String, StrVal: n.Value}))
		return true
	case reflect.PointerTo(t).Implements(jsonUnmarshalType):
		// As walk and the JSON round trip do it: through the JSON form of the YAML value.
		var g any
		if err := n.Decode(&g); err != nil {
			return false
		}
		b, err := json.Marshal(jsonable(g))
		if err != nil {
			return false
		}
		return json.Unmarshal(b, v.Addr().Interface()) == nil
	case reflect.PointerTo(t).Implements(textUnmarshalerType):
		return false // encoding/json would use UnmarshalText
	}
	switch t.Kind() {
	case reflect.Struct:
		return fastStructValue(c, n, v)
	case reflect.Map:
		kt := t.Key()
		if n.Kind != yaml.MappingNode || kt.Kind() != reflect.String || reflect.PointerTo(kt).Implements(textUnmarshalerType) ||
			reflect.PointerTo(kt).Implements(jsonUnmarshalType) {
			return false
		}
		m := reflect.MakeMapWithSize(t, len(n.Content)/2)
		ps, ok := fastPairs(n)
		if !ok {
			return false
		}
		et := t.Elem()
		for i := 0; i+1 < len(ps); i += 2 {
			k, val := ps[i], ps[i+1]
			if k.Kind != yaml.ScalarNode || !utf8.ValidString(k.Value) {
				return false
			}
			key := reflect.ValueOf(k.Value).Convert(kt)
			if m.MapIndex(key).IsValid() {
				return false // given twice
			}
			e := reflect.New(et).Elem()
			if !fastItem(c, val, e) {
				return false
			}
			m.SetMapIndex(key, e)
		}
		v.Set(m)
		return true
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return false
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, item := range n.Content {
			if !fastItem(c, item, s.Index(i)) {
				return false
			}
		}
		v.Set(s)
		return true
	case reflect.String:
		if n.Kind != yaml.ScalarNode || !utf8.ValidString(n.Value) {
			return false
		}
		v.SetString(n.Value)
		return true
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return false
		}
		switch n.Value {
		case "true", "True", "TRUE":
			v.SetBool(true)
		case "false", "False", "FALSE":
			v.SetBool(false)
		default:
			var b bool
			if n.Decode(&b) != nil {
				return false
			}
			v.SetBool(b)
		}
		return true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		i, ok := fastInt(n, t.Kind())
		if !ok {
			return false
		}
		v.SetInt(i)
		return true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, ok := fastInt(n, t.Kind())
		if !ok {
			return false
		}
		v.SetUint(uint64(i))
		return true
	}
	return false // floats, arrays, interfaces...: left to the walker and encoding/json
}

// fastItem reads a map value or sequence item: a null one is the zero value, as encoding/json
// makes of the walker's nil, except for types that decode JSON null themselves.
func fastItem(c fastCache, n *yaml.Node, e reflect.Value) bool {
	m := n
	for m.Kind == yaml.AliasNode && m.Alias != nil {
		m = m.Alias
	}
	if isNull(m) {
		t := e.Type()
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		return e.Kind() == reflect.Pointer || !(reflect.PointerTo(t).Implements(jsonUnmarshalType) || reflect.PointerTo(t).Implements(textUnmarshalerType))
	}
	return fastDecode(c, n, e)
}

// fastInt returns the integer of scalar n when walkInt would accept it for a value of kind k.
func fastInt(n *yaml.Node, k reflect.Kind) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return 0, false
	}
	i, err := strconv.ParseInt(n.Value, 10, 64)
	if err != nil || !plainDecimal(n.Value) {
		// Other notations (0x, 0o, +, underscores): as walkInt reads them.
		if n.Decode(&i) != nil {
			return 0, false
		}
	}
	lo, hi := int64(-1<<63), int64(1<<63-1)
	switch k {
	case reflect.Int8:
		lo, hi = -1<<7, 1<<7-1
	case reflect.Int16:
		lo, hi = -1<<15, 1<<15-1
	case reflect.Int32:
		lo, hi = -1<<31, 1<<31-1
	case reflect.Uint8:
		lo, hi = 0, 1<<8-1
	case reflect.Uint16:
		lo, hi = 0, 1<<16-1
	case reflect.Uint32:
		lo, hi = 0, 1<<32-1
	case reflect.Uint, reflect.Uint64:
		lo = 0
	}
	return i, lo <= i && i <= hi
}

// plainDecimal reports whether s is "0" or an optionally negative decimal without leading zeros.
func plainDecimal(s string) bool {
	if strings.HasPrefix(s, "-") {
		s = s[1:]
	}
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// fastPairs returns the key and value nodes of mapping n, alternating, with merge keys expanded
// as pairs does; ok is false when a key is given twice.
func fastPairs(n *yaml.Node) (kv []*yaml.Node, ok bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			ps := pairs(n)
			kv = make([]*yaml.Node, 0, 2*len(ps))
			for _, p := range ps {
				kv = append(kv, p[0], p[1])
			}
			return kv, true
		}
	}
	return n.Content, true
}

// fastStructValue reads mapping n into struct v.
func fastStructValue(c fastCache, n *yaml.Node, v reflect.Value) bool {
	if n.Kind != yaml.MappingNode {
		return false
	}
	fs := c.get(v.Type())
	if !fs.ok {
		return false
	}
	ps, ok := fastPairs(n)
	if !ok {
		return false
	}
	var seenSmall uint64
	var seenBig []bool
	if len(fs.fields) > 64 {
		seenBig = make([]bool, len(fs.fields))
	}
	for i := 0; i+1 < len(ps); i += 2 {
		k, val := ps[i], ps[i+1]
		fi, known := fs.names[k.Value]
		if !known || k.Kind != yaml.ScalarNode {
			return false // unknown field
		}
		if seenBig != nil {
			if seenBig[fi] {
				return false
			}
			seenBig[fi] = true
		} else {
			if seenSmall&(1<<fi) != 0 {
				return false // given twice
			}
			seenSmall |= 1 << fi
		}
		f := fs.fields[fi]
		if !fastDecode(c, val, v.FieldByIndex(f.index)) {
			return false
		}
	}
	return true
}
