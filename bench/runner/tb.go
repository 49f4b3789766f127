package runner

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// tb lets the e2e harness (written for tests) run inside the svcbench program: it logs
// through slog, collects cleanups and runs them last-registered first in Close, and turns
// Fatal into a panic that Do recovers. Methods of testing.TB the harness does not call are
// not implemented (the embedded nil interface would panic).
type tb struct {
	testing.TB
	log *slog.Logger
	dir string

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	ntemp    int
}

type fatal struct{ msg string }

func newTB(log *slog.Logger, dir string) *tb { return &tb{log: log, dir: dir} }

func (t *tb) Helper()                         {}
func (t *tb) Name() string                    { return "svcbench" }
func (t *tb) Log(args ...any)                 { t.log.Info(fmt.Sprint(args...)) }
func (t *tb) Logf(format string, args ...any) { t.log.Info(fmt.Sprintf(format, args...)) }
func (t *tb) Error(args ...any)               { t.fail(fmt.Sprint(args...)) }
func (t *tb) Errorf(format string, args ...any) {
	t.fail(fmt.Sprintf(format, args...))
}
func (t *tb) Fatal(args ...any)                 { t.fail(fmt.Sprint(args...)); panic(fatal{fmt.Sprint(args...)}) }
func (t *tb) Fatalf(format string, args ...any) { t.Fatal(fmt.Sprintf(format, args...)) }
func (t *tb) FailNow()                          { t.Fatal("FailNow") }
func (t *tb) Skip(args ...any)                  { t.Fatal(append([]any{"skip: "}, args...)...) }
func (t *tb) Skipf(format string, args ...any)  { t.Fatal("skip: " + fmt.Sprintf(format, args...)) }
func (t *tb) Fail()                             { t.fail("Fail") }

func (t *tb) fail(msg string) {
	t.mu.Lock()
	t.failed = true
	t.mu.Unlock()
	t.log.Error(msg)
}

func (t *tb) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

func (t *tb) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *tb) TempDir() string {
	t.mu.Lock()
	t.ntemp++
	n := t.ntemp
	t.mu.Unlock()
	d := filepath.Join(t.dir, fmt.Sprintf("tmp%d", n))
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	return d
}

// Do runs f, turning a Fatal inside it into an error.
func (t *tb) Do(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(fatal); ok {
				err = fmt.Errorf("%s", f.msg)
				return
			}
			panic(r)
		}
	}()
	f()
	return nil
}

// Close runs the cleanups, last registered first; a Fatal inside one is logged.
func (t *tb) Close() {
	for {
		t.mu.Lock()
		n := len(t.cleanups)
		if n == 0 {
			t.mu.Unlock()
			return
		}
		f := t.cleanups[n-1]
		t.cleanups = t.cleanups[:n-1]
		t.mu.Unlock()
		if err := t.Do(f); err != nil {
			t.log.Error("cleanup failed", "err", err)
		}
	}
}
