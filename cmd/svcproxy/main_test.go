package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCheckExitCodes(t *testing.T) {
	code, out, _ := runCmd("check", "--config", "../../deploy/examples/broken.yaml")
	if code != exitInput {
		t.Fatalf("broken config: exit %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "../../deploy/examples/broken.yaml:") || !strings.Contains(out, "problem(s)") {
		t.Fatalf("each problem must name file and line:\n%s", out)
	}
	if code, out, _ := runCmd("check", "--config", "../../deploy/examples/standalone.yaml"); code != exitOK || !strings.Contains(out, "ok") {
		t.Fatalf("good config: exit %d, %s", code, out)
	}
	if code, _, _ := runCmd("check"); code != exitInput {
		t.Fatalf("check without --config: exit %d", code)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"run"}, {"status", "--bogus"}, {"version", "extra"}, {"run", "--config", "missing.yaml"}} {
		if code, _, _ := runCmd(args...); code != exitInput {
			t.Errorf("%v: exit %d, want 1", args, code)
		}
	}
	if code, out, _ := runCmd("version"); code != exitOK || !strings.Contains(out, "go:") {
		t.Errorf("version: %d %q", code, out)
	}
}

func TestStatusWithoutDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	code, _, errs := runCmd("status", "--api-socket", sock)
	if code != exitRuntime || !strings.Contains(errs, "not reachable") {
		t.Fatalf("status with no daemon: exit %d, %q", code, errs)
	}
}
