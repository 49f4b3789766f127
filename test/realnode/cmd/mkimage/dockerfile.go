package main

import (
	"encoding/json"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/svcproxy/svcproxy/test/realnode/ociimage"
)

// Spec is what the Dockerfile says the svcproxy image is, in the terms mkimage builds it in.
// readSpec accepts only the instructions it can reproduce, so the Dockerfile cannot grow a
// step that `make image` would silently leave out.
type Spec struct {
	From     string   // the final stage's base, e.g. debian:trixie-slim (built by debootstrap)
	Packages []string // what the final stage's apt-get install names
	GoBuild  GoBuild  // the build stage's go build
	Copies   []Copy   // the final stage's COPY lines, in order
	Config   ociimage.Config
}

// GoBuild is the build stage's one go build command.
type GoBuild struct {
	Env      []string // assignments before the command, e.g. CGO_ENABLED=0
	Flags    []string // its flags but -o, build args expanded
	OutDir   string   // the -o directory, e.g. /out/
	Packages []string
}

// Copy is one COPY line of the final stage.
type Copy struct {
	FromBuild bool     // --from=<build stage>: Srcs are paths under GoBuild.OutDir
	Srcs      []string // else relative to the build context
	Dest      string
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case
	args string
}

// parseDockerfile splits a Dockerfile into instructions: comment and blank lines dropped,
// lines ending in '\' joined to the next.
func parseDockerfile(text string) ([]instruction, error) {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("line %d: continuation at the end of the file", start)
	}
	return out, nil
}

// readSpec reads the Dockerfile's build stage and final stage. buildArgs override ARG
// defaults (as docker build --build-arg). It fails on an instruction, a RUN command or a flag
// it cannot reproduce.
func readSpec(text string, buildArgs map[string]string) (Spec, error) {
	ins, err := parseDockerfile(text)
	if err != nil {
		return Spec{}, err
	}
	type stage struct {
		name, from string
		ins        []instruction
		vars       map[string]string
	}
	var stages []*stage
	global := map[string]string{}
	for _, in := range ins {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("Dockerfile line %d (%s): %s", in.line, in.cmd, fmt.Sprintf(format, a...))
		}
		vars := global
		if len(stages) > 0 {
			vars = stages[len(stages)-1].vars
		}
		switch in.cmd {
		case "ARG":
			name, def, hasDef := strings.Cut(in.args, "=")
			v, ok := buildArgs[name]
			switch {
			case ok:
			case hasDef:
				v = def
			default:
				v = global[name] // a global ARG redeclared in a stage
			}
			vars[name] = v
		case "FROM":
			f := strings.Fields(in.args)
			st := &stage{vars: map[string]string{}}
			switch {
			case len(f) == 1:
			case len(f) == 3 && strings.EqualFold(f[1], "AS"):
				st.name = f[2]
			default:
				return Spec{}, fail("want FROM IMAGE [AS NAME]")
			}
			from, err := expand(f[0], global)
			if err != nil {
				return Spec{}, fail("%v", err)
			}
			st.from = from
			stages = append(stages, st)
		default:
			if len(stages) == 0 {
				return Spec{}, fail("before the first FROM")
			}
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	if len(stages) != 2 {
		return Spec{}, fmt.Errorf("Dockerfile: %d stages, mkimage knows a build stage and a final stage", len(stages))
	}
	build, final := stages[0], stages[1]
	spec := Spec{From: final.from}
	if err := readBuildStage(build.ins, build.vars, &spec); err != nil {
		return Spec{}, err
	}
	if err := readFinalStage(final.ins, final.vars, build.name, &spec); err != nil {
		return Spec{}, err
	}
	return spec, nil
}

// readBuildStage finds the go build; go mod download, WORKDIR and COPY into the stage are
// what the build needs anyway.
func readBuildStage(ins []instruction, vars map[string]string, spec *Spec) error {
	found := false
	for _, in := range ins {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("Dockerfile line %d (%s, build stage): %s", in.line, in.cmd, fmt.Sprintf(format, a...))
		}
		switch in.cmd {
		case "WORKDIR", "COPY":
		case "RUN":
			cmds, err := runCommands(runFlags(in.args), vars)
			if err != nil {
				return fail("%v", err)
			}
			for _, c := range cmds {
				env, argv := splitAssignments(c)
				switch {
				case len(argv) == 3 && argv[0] == "go" && argv[1] == "mod" && argv[2] == "download" && len(env) == 0:
				case len(argv) >= 2 && argv[0] == "go" && argv[1] == "build":
					if found {
						return fail("a second go build; mkimage builds every binary in one")
					}
					found = true
					gb, err := readGoBuild(env, argv[2:])
					if err != nil {
						return fail("%v", err)
					}
					spec.GoBuild = gb
				default:
					return fail("mkimage cannot run %q", strings.Join(c, " "))
				}
			}
		default:
			return fail("mkimage does not know this instruction")
		}
	}
	if !found {
		return fmt.Errorf("Dockerfile: no go build in the build stage")
	}
	return nil
}

// goFlagsWithValue are the go build flags whose value may be the next word.
var goFlagsWithValue = map[string]bool{
	"-o": true, "-ldflags": true, "-gcflags": true, "-asmflags": true, "-tags": true, "-p": true,
	"-mod": true, "-modfile": true, "-overlay": true, "-pgo": true, "-pkgdir": true,
	"-buildmode": true, "-toolexec": true, "-installsuffix": true,
}

func readGoBuild(env, args []string) (GoBuild, error) {
	gb := GoBuild{Env: env}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			gb.Packages = append(gb.Packages, a)
			continue
		}
		name, val, hasVal := strings.Cut(a, "=")
		if !hasVal && goFlagsWithValue[name] {
			if i+1 == len(args) {
				return GoBuild{}, fmt.Errorf("go build %s without a value", name)
			}
			i++
			val = args[i]
		}
		if name == "-o" {
			gb.OutDir = val
			continue
		}
		gb.Flags = append(gb.Flags, a)
		if !hasVal && goFlagsWithValue[name] {
			gb.Flags = append(gb.Flags, val)
		}
	}
	if !strings.HasSuffix(gb.OutDir, "/") || len(gb.Packages) == 0 {
		return GoBuild{}, fmt.Errorf("want go build ... -o DIR/ PACKAGES...")
	}
	return gb, nil
}

// readFinalStage reads the packages, COPY lines, ENV, ENTRYPOINT and CMD. Its RUN lines may
// only install packages with apt-get (and drop apt's lists, which the base leaves out anyway).
func readFinalStage(ins []instruction, vars map[string]string, buildStage string, spec *Spec) error {
	for _, in := range ins {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("Dockerfile line %d (%s, final stage): %s", in.line, in.cmd, fmt.Sprintf(format, a...))
		}
		switch in.cmd {
		case "RUN":
			cmds, err := runCommands(runFlags(in.args), vars)
			if err != nil {
				return fail("%v", err)
			}
			for _, c := range cmds {
				switch {
				case len(c) == 2 && c[0] == "apt-get" && c[1] == "update":
				case len(c) >= 2 && c[0] == "apt-get" && c[1] == "install":
					for _, w := range c[2:] {
						if !strings.HasPrefix(w, "-") {
							spec.Packages = append(spec.Packages, w)
						}
					}
				case strings.Join(c, " ") == "rm -rf /var/lib/apt/lists/*":
				default:
					return fail("mkimage cannot run %q in the image", strings.Join(c, " "))
				}
			}
		case "COPY":
			cmds, err := runCommands(in.args, vars)
			if err != nil || len(cmds) != 1 || len(cmds[0]) < 2 {
				return fail("want COPY [--from=%s] SRC... DEST", buildStage)
			}
			w := cmds[0]
			c := Copy{Srcs: w[:len(w)-1], Dest: w[len(w)-1]}
			if from, ok := strings.CutPrefix(c.Srcs[0], "--from="); ok {
				if from != buildStage {
					return fail("--from=%s: mkimage knows only the build stage %q", from, buildStage)
				}
				c.FromBuild, c.Srcs = true, c.Srcs[1:]
			}
			for _, s := range c.Srcs {
				if strings.HasPrefix(s, "-") || strings.ContainsAny(s, "*?[") {
					return fail("mkimage does not know %q", s)
				}
			}
			if len(c.Srcs) > 1 && !strings.HasSuffix(c.Dest, "/") {
				return fail("several sources need a DEST ending in /")
			}
			spec.Copies = append(spec.Copies, c)
		case "ENV":
			k, v, ok := strings.Cut(in.args, "=")
			if !ok || strings.ContainsAny(k, " \t") {
				return fail("want ENV NAME=VALUE")
			}
			v, err := expand(strings.Trim(v, `"`), vars)
			if err != nil {
				return fail("%v", err)
			}
			spec.Config.Env = append(spec.Config.Env, k+"="+v)
		case "WORKDIR":
			spec.Config.WorkingDir = in.args
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
				return fail("want the JSON (exec) form: %v", err)
			}
			if in.cmd == "ENTRYPOINT" {
				spec.Config.Entrypoint = argv
			} else {
				spec.Config.Cmd = argv
			}
		default:
			return fail("mkimage does not know this instruction")
		}
	}
	if len(spec.Packages) == 0 || len(spec.Copies) == 0 {
		return fmt.Errorf("Dockerfile: no apt-get install or no COPY in the final stage")
	}
	return nil
}

// File is where a COPY source lands in the image: DEST itself, or DEST/<base name> when DEST
// ends in '/'.
func (c Copy) File(src string) string {
	if strings.HasSuffix(c.Dest, "/") {
		return path.Join(c.Dest, path.Base(src))
	}
	return c.Dest
}

// Files maps the COPY lines to files on disk: build-stage outputs in outDir (where go build
// wrote them), the rest in the build context.
func (s Spec) Files(outDir, context string) ([]ociimage.File, error) {
	var files []ociimage.File
	for _, c := range s.Copies {
		for _, src := range c.Srcs {
			f := ociimage.File{Name: c.File(src), Src: filepath.Join(context, filepath.FromSlash(src))}
			if c.FromBuild {
				rel, ok := strings.CutPrefix(src, s.GoBuild.OutDir)
				if !ok {
					return nil, fmt.Errorf("COPY %s: not in the go build's -o %s", src, s.GoBuild.OutDir)
				}
				f.Src = filepath.Join(outDir, rel)
			}
			files = append(files, f)
		}
	}
	return files, nil
}

// splitAssignments splits leading NAME=VALUE words from a command.
func splitAssignments(words []string) (env, argv []string) {
	for i, w := range words {
		name, _, ok := strings.Cut(w, "=")
		if !ok || name == "" || strings.ContainsAny(name, "-/.") {
			return words[:i], words[i:]
		}
	}
	return words, nil
}

// runFlags drops a RUN instruction's --mount= and --network= flags (caches and network
// access of docker build, which change nothing in what is built).
func runFlags(s string) string {
	for strings.HasPrefix(s, "--mount=") || strings.HasPrefix(s, "--network=") {
		_, rest, _ := strings.Cut(s, " ")
		s = strings.TrimSpace(rest)
	}
	return s
}

// runCommands splits a RUN line into its commands, as sh would for the simple lines a
// Dockerfile holds: commands separated by && or ;,
// blanks separating words, '...' and "..." quoting, backslash escaping, $NAME and ${NAME}
// expanded from vars. Pipes, ||, & and an unknown variable are errors.
func runCommands(s string, vars map[string]string) ([][]string, error) {
	var cmds [][]string
	var words []string
	var cur strings.Builder
	inWord := false
	endWord := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	endCmd := func() error {
		endWord()
		if len(words) == 0 {
			return fmt.Errorf("empty command in %q", s)
		}
		cmds = append(cmds, words)
		words = nil
		return nil
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			endWord()
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			inWord = true
			for i++; i < len(s) && s[i] != '"'; i++ {
				switch {
				case s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0:
					i++
					cur.WriteByte(s[i])
				case s[i] == '$':
					n, v, err := expandOne(s[i:], vars)
					if err != nil {
						return nil, err
					}
					cur.WriteString(v)
					i += n - 1
				default:
					cur.WriteByte(s[i])
				}
			}
			if i >= len(s) {
				return nil, fmt.Errorf(`unterminated " in %q`, s)
			}
		case c == '$':
			n, v, err := expandOne(s[i:], vars)
			if err != nil {
				return nil, err
			}
			cur.WriteString(v)
			i += n - 1
			inWord = true
		case c == ';':
			if err := endCmd(); err != nil {
				return nil, err
			}
		case c == '&' && i+1 < len(s) && s[i+1] == '&':
			if err := endCmd(); err != nil {
				return nil, err
			}
			i++
		case c == '&' || c == '|' || c == '`' || c == '<' || c == '>':
			return nil, fmt.Errorf("mkimage does not run %q (only commands joined by && or ;)", s)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if err := endCmd(); err != nil {
		return nil, err
	}
	return cmds, nil
}

// expand expands every $NAME and ${NAME} in s.
func expand(s string, vars map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		n, v, err := expandOne(s[i:], vars)
		if err != nil {
			return "", err
		}
		b.WriteString(v)
		i += n - 1
	}
	return b.String(), nil
}

// expandOne expands the $NAME or ${NAME} that s starts with and says how long it was.
func expandOne(s string, vars map[string]string) (int, string, error) {
	name, n := "", 0
	if strings.HasPrefix(s, "${") {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return 0, "", fmt.Errorf("unterminated ${ in %q", s)
		}
		name, n = s[2:end], end+1
	} else {
		n = 1
		for n < len(s) && (s[n] == '_' || 'a' <= s[n] && s[n] <= 'z' || 'A' <= s[n] && s[n] <= 'Z' || n > 1 && '0' <= s[n] && s[n] <= '9') {
			n++
		}
		name = s[1:n]
	}
	v, ok := vars[name]
	if !ok || name == "" {
		return 0, "", fmt.Errorf("unknown variable %q (only ARGs are known)", s[:n])
	}
	return n, v, nil
}
