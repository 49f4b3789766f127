package file

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/config"
)

// waitTimeout bounds every wait for a delivery; tests never depend on it otherwise.
const waitTimeout = 10 * time.Second

// version returns a valid config whose only service has port p, so deliveries can be told apart.
func version(p int) string {
	return fmt.Sprintf(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
serviceCIDR: 10.96.0.0/16
services:
  - {name: web, clusterIP: 10.96.0.10, ports: [{port: %d}], endpoints: [{ip: 10.244.1.5}]}
`, p)
}

const invalid = `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
mode: fast
`

type delivery struct {
	cfg *config.Config
	err error
}

// port returns the port of the delivered config's service, or 0 for an error.
func (d delivery) port(t *testing.T) int {
	t.Helper()
	if d.err != nil {
		return 0
	}
	st, err := d.cfg.BuildState("n", nil, config.NewMemAllocator())
	if err != nil {
		t.Fatalf("BuildState: %v", err)
	}
	return int(st.Services[0].Ports[0].Port)
}

type harness struct {
	t      *testing.T
	path   string
	got    chan delivery
	reads  chan bool // one per read of the file: whether it delivered
	reload chan struct{}
	done   chan error
}

// start runs Watch on path in the background until the test ends.
func start(t *testing.T, path string, debounce time.Duration) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, path: path, got: make(chan delivery, 100), reads: make(chan bool, 1000), reload: make(chan struct{}), done: make(chan error, 1)}
	opts := Options{Debounce: debounce, Reload: h.reload, onRead: func(delivered bool) { h.reads <- delivered }}
	go func() {
		h.done <- Watch(ctx, path, opts, func(c *config.Config, err error) {
			h.got <- delivery{c, err}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Watch returned %v", err)
			}
		case <-time.After(waitTimeout):
			t.Error("Watch did not return after cancel")
		}
	})
	return h
}

func (h *harness) next() delivery {
	h.t.Helper()
	select {
	case d := <-h.got:
		return d
	case err := <-h.done:
		h.t.Fatalf("Watch returned early: %v", err)
	case <-time.After(waitTimeout):
		h.t.Fatal("no delivery")
	}
	return delivery{}
}

// expect waits for the next delivery and checks it carries port p (0: an error).
func (h *harness) expect(p int) delivery {
	h.t.Helper()
	d := h.next()
	if got := d.port(h.t); got != p {
		h.t.Fatalf("delivered port %d (err %v), want %d", got, d.err, p)
	}
	return d
}

// barrier sends a Reload and waits for its delivery (port p): any delivery made before it
// would have come first and failed the check.
func (h *harness) barrier(p int) {
	h.t.Helper()
	select {
	case h.reload <- struct{}{}:
	case <-time.After(waitTimeout):
		h.t.Fatal("Watch did not take the reload")
	}
	h.expect(p)
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInPlaceWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	write(t, path, version(81))
	h.expect(81)
	h.barrier(81)
}

func TestRenameOver(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	// What vim and most tools do: write a new file, rename it over the old one.
	tmp := filepath.Join(dir, ".svcproxy.yaml.swp")
	write(t, tmp, version(82))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	h.expect(82)
	// And again: the watch survives the replacement of the inode.
	write(t, tmp, version(83))
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	h.expect(83)
}

func TestBurstIsCoalesced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	// A long quiet period, so that the whole burst below falls inside it.
	h := start(t, path, time.Second)
	h.expect(80)
	const n = 30
	for i := 1; i <= n; i++ {
		write(t, path, version(1000+i))
	}
	var seen []int
	for {
		p := h.next().port(t)
		seen = append(seen, p)
		if p == 1000+n {
			break
		}
	}
	h.barrier(1000 + n)
	reads := len(h.reads) - 2 // less the first read and the barrier's
	if len(seen) >= n/2 || reads >= n/2 {
		t.Errorf("%d writes gave %d reads and %d deliveries %v; want them coalesced", n, reads, len(seen), seen)
	}
	t.Logf("%d writes -> %d reads, %d deliveries", n, reads, len(seen))
}

func TestInvalidThenFixed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	write(t, path, invalid)
	d := h.expect(0)
	var perr *config.Error
	if !errors.As(d.err, &perr) || len(perr.Problems) != 1 || perr.Problems[0].Line != 3 || perr.Problems[0].Field != "mode" {
		t.Fatalf("invalid file delivered %v", d.err)
	}
	if !strings.HasPrefix(d.err.Error(), path+":3:") {
		t.Errorf("error %q does not name the file and line", d.err)
	}
	write(t, path, version(84))
	h.expect(84)
}

// TestTooLargeThenFixed: a file over config.MaxFileSize is refused with a problem naming the
// limit (without being read whole), and a good file afterwards is delivered again.
func TestTooLargeThenFixed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	big := path + ".tmp"
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(config.MaxFileSize + 1); err != nil { // sparse: costs no disk
		t.Fatal(err)
	}
	f.Close()
	if err := os.Rename(big, path); err != nil {
		t.Fatal(err)
	}
	d := h.expect(0)
	var perr *config.Error
	if !errors.As(d.err, &perr) || !strings.Contains(d.err.Error(), "16 MiB") {
		t.Fatalf("a file over the size limit delivered %v, want a problem naming the limit", d.err)
	}
	write(t, path, version(84))
	h.expect(84)
}

func TestUnchangedIsNotRedeliveredButReloadIs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	if !<-h.reads {
		t.Fatal("first read did not deliver")
	}
	// Same bytes again, and an unrelated file in the same directory: the file is read again,
	// and nothing is delivered.
	write(t, path, version(80))
	write(t, filepath.Join(dir, "other.txt"), "x")
	select {
	case delivered := <-h.reads:
		if delivered {
			t.Fatal("unchanged content delivered again")
		}
	case <-time.After(waitTimeout):
		t.Fatal("the rewrite was not noticed")
	}
	// Reload delivers even though nothing changed.
	h.barrier(80)
	write(t, path, version(85))
	h.expect(85)
	select {
	case d := <-h.got:
		t.Errorf("unexpected extra delivery: port %d err %v", d.port(t), d.err)
	default:
	}
}

func TestRemovedThenRecreated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	h := start(t, path, 20*time.Millisecond)
	h.expect(80)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	d := h.expect(0)
	if !errors.Is(d.err, os.ErrNotExist) {
		t.Errorf("removed file delivered %v", d.err)
	}
	write(t, path, version(86))
	h.expect(86)
}

// TestConfigMapSymlinkSwap does what the kubelet does to a ConfigMap volume: the file is a
// symlink through `..data`, and an update swaps `..data` to a new directory.
func TestConfigMapSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	version1 := filepath.Join(dir, "..2026_01_01_00_00_00.1")
	if err := os.Mkdir(version1, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(version1, "svcproxy.yaml"), version(80))
	mustSymlink(t, filepath.Base(version1), filepath.Join(dir, "..data"))
	mustSymlink(t, "..data/svcproxy.yaml", filepath.Join(dir, "svcproxy.yaml"))

	h := start(t, filepath.Join(dir, "svcproxy.yaml"), 20*time.Millisecond)
	h.expect(80)
	for i, p := range []int{87, 88} {
		next := filepath.Join(dir, fmt.Sprintf("..2026_01_01_00_00_00.%d", i+2))
		if err := os.Mkdir(next, 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(next, "svcproxy.yaml"), version(p))
		mustSymlink(t, filepath.Base(next), filepath.Join(dir, "..data_tmp"))
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		h.expect(p)
	}
}

// TestSymlinkToAnotherDirectory follows a config file that is a symlink to a file elsewhere,
// edited in place there.
func TestSymlinkToAnotherDirectory(t *testing.T) {
	real := filepath.Join(t.TempDir(), "real.yaml")
	write(t, real, version(80))
	link := filepath.Join(t.TempDir(), "svcproxy.yaml")
	mustSymlink(t, real, link)
	h := start(t, link, 20*time.Millisecond)
	h.expect(80)
	write(t, real, version(89))
	h.expect(89)
}

func TestMissingDirectoryFails(t *testing.T) {
	err := Watch(context.Background(), filepath.Join(t.TempDir(), "nope", "svcproxy.yaml"), Options{}, func(*config.Config, error) {})
	if err == nil {
		t.Fatal("Watch on a missing directory succeeded")
	}
}

func TestDeliverIsSerial(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svcproxy.yaml")
	write(t, path, version(80))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	inside, overlap := false, false
	got := make(chan int, 100)
	reload := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, path, Options{Debounce: 5 * time.Millisecond, Reload: reload}, func(c *config.Config, err error) {
			mu.Lock()
			if inside {
				overlap = true
			}
			inside = true
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			inside = false
			mu.Unlock()
			got <- 1
		})
	}()
	<-got
	for i := 0; i < 5; i++ {
		write(t, path, version(90+i))
		reload <- struct{}{}
	}
	for i := 0; i < 5; i++ {
		select {
		case <-got:
		case <-time.After(waitTimeout):
			t.Fatal("no delivery")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch returned %v", err)
	}
	if overlap {
		t.Error("deliver was called concurrently")
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// TestInitialConfigIsNotParsedAgain: a config the caller already parsed from the bytes the
// file still holds is delivered as is (the same pointer); a file that changed in between is
// parsed.
func TestInitialConfigIsNotParsedAgain(t *testing.T) {
	for _, changed := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "svcproxy.yaml")
		write(t, path, version(80))
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		initial, err := config.Parse(path, data)
		if err != nil {
			t.Fatal(err)
		}
		if changed {
			write(t, path, version(81))
		}
		ctx, cancel := context.WithCancel(context.Background())
		got := make(chan *config.Config, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = Watch(ctx, path, Options{Initial: initial, InitialData: data}, func(c *config.Config, err error) {
				if err != nil {
					t.Errorf("delivery error: %v", err)
				}
				select {
				case got <- c:
				default:
				}
			})
		}()
		var c *config.Config
		select {
		case c = <-got:
		case <-time.After(waitTimeout):
			t.Fatal("no delivery")
		}
		cancel()
		<-done
		if same := c == initial; same == changed {
			t.Errorf("changed=%v: delivered the initial config = %v", changed, same)
		}
	}
}
