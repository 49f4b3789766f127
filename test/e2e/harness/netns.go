package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNS is a named network namespace the test created (`ip netns add`), visible as
// /run/netns/<Name> so a person can inspect it with `ip netns exec <Name> ...` while a test
// is paused. It is deleted on test cleanup.
type NetNS struct {
	Name   string
	handle netns.NsHandle
}

// RandomName returns prefix followed by 8 random hex digits, short enough for an interface
// name when prefix has at most 6 characters.
func RandomName(prefix string) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("harness: reading random bytes: %v", err))
	}
	return prefix + hex.EncodeToString(b)
}

// NewNetNS creates a fresh network namespace named prefix+random, brings its loopback up and
// registers its deletion (after every process started in it was stopped: cleanups run last
// registered first) with t.Cleanup.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	t.Helper()
	name := RandomName(prefix)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("harness: ip netns add %s: %v: %s", name, err, out)
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		t.Fatalf("harness: opening netns %s: %v", name, err)
	}
	n := &NetNS{Name: name, handle: h}
	t.Cleanup(func() {
		_ = n.handle.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("harness: ip netns del %s: %v: %s", name, err, out)
		}
	})
	if err := n.WithNetlink(func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("harness: bringing lo up in %s: %v", name, err)
	}
	return n
}

// Path returns the namespace's bind-mount path, for nsenter --net=PATH.
func (n *NetNS) Path() string { return "/run/netns/" + n.Name }

// Do runs fn on an OS thread switched into the namespace, and switches the thread back
// afterwards. Sockets created and processes started (exec.Cmd.Start) inside fn belong to the
// namespace for their whole life, which is what Dial and Start rely on. If the thread cannot
// be switched back it is left locked, so Go discards it instead of reusing it elsewhere.
func (n *NetNS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: reading the thread's namespace: %w", n.Name, err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: entering: %w", n.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- fmt.Errorf("netns %s: leaving: %w (fn: %v)", n.Name, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// WithNetlink calls fn with a netlink handle bound to the namespace (no thread switching).
func (n *NetNS) WithNetlink(fn func(h *netlink.Handle) error) error {
	h, err := netlink.NewHandleAt(n.handle)
	if err != nil {
		return fmt.Errorf("netns %s: netlink handle: %w", n.Name, err)
	}
	defer h.Close()
	return fn(h)
}

// DialContext dials from inside the namespace: the socket is created on a thread switched
// into it, so the connection lives there whatever goroutine uses it afterwards. Its signature
// fits rest.Config.Dial and http.Transport.DialContext.
func (n *NetNS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Run runs a command inside the namespace and returns its combined output; an error names the
// command and holds its output.
func (n *NetNS) Run(name string, args ...string) (string, error) {
	var out []byte
	err := n.Do(func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		return err
	})
	if err != nil {
		return string(out), fmt.Errorf("netns %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// NewBPFFS mounts a bpffs instance of the test's own in a temporary directory and unmounts it
// on cleanup, which drops every pin in it. Daemons under test pin there (ebpf.pinPath) instead
// of the host's /sys/fs/bpf, so they never see, or remove, anyone else's objects.
func NewBPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("harness: mounting bpffs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("harness: unmounting bpffs %s: %v", dir, err)
		}
	})
	return dir
}
