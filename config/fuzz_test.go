package config

import (
	"errors"
	"testing"
)

// FuzzParse feeds Parse (what `svcproxy check`, a start and a reload read a config file with)
// any bytes. Its seed corpus (testdata/fuzz/FuzzParse) holds valid files with anchors,
// aliases and merge keys, Kubernetes Service and EndpointSlice documents, the hostile inputs of
// TestHostileInput and broken YAML; a crasher the fuzzer finds is added there. Whatever the
// bytes, Parse must return (no panic, no stack overflow) either a config or problems that
// each name the file, a line and a column; the same bytes must give the same answer again;
// and a config must build a state, or problems located the same way.
//
//	go test ./config -run '^$' -fuzz FuzzParse -fuzztime 30s -fuzzminimizetime 2s -parallel 1
//
// (A short -fuzzminimizetime keeps the run fuzzing: by default each new interesting input may
// be minimized for up to a minute, and a few seeds are large.)
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.yaml", data)
		checkOutcome(t, "Parse", cfg != nil, err)
		cfg2, err2 := Parse("f.yaml", data)
		if (cfg == nil) != (cfg2 == nil) || errString(err) != errString(err2) {
			t.Fatalf("parsed twice, the same bytes gave\n%v\nthen\n%v", err, err2)
		}
		if cfg == nil {
			return
		}
		st, err := cfg.BuildState("", nil, NewMemAllocator())
		checkOutcome(t, "BuildState", st != nil, err)
		st2, err2 := cfg2.BuildState("", nil, NewMemAllocator())
		if errString(err) != errString(err2) || (st != nil) != (st2 != nil) || (st != nil && render(st) != render(st2)) {
			t.Fatalf("built twice, the same bytes gave\n%v\nthen\n%v", err, err2)
		}
	})
}

// checkOutcome checks that a step either succeeded or failed with an *Error whose problems
// each have a file, a line and a column.
func checkOutcome(t *testing.T, step string, ok bool, err error) {
	t.Helper()
	if ok == (err != nil) {
		t.Fatalf("%s: result and error %v: want exactly one", step, err)
	}
	if err == nil {
		return
	}
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("%s: error %v (%T), want an *Error", step, err, err)
	}
	if len(perr.Problems) == 0 || len(perr.Problems) > MaxProblems+1 {
		t.Fatalf("%s: %d problems", step, len(perr.Problems))
	}
	for _, p := range perr.Problems {
		if p.File != "f.yaml" || p.Line < 1 || p.Column < 1 || p.Message == "" {
			t.Fatalf("%s: problem %q has no file, line, column or message", step, p)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
