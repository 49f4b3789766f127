package daemon

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func TestDeletedCount(t *testing.T) {
	for out, want := range map[string]int{
		"conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n": 3,
		"conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n": 0,
		"conntrack v1.4.7 (conntrack-tools): Operation not permitted\n":           0,
	} {
		if got := deletedCount(out); got != want {
			t.Errorf("deletedCount(%q) = %d, want %d", out, got, want)
		}
	}
}

// TestFlushNATConntrack: after a switch from iptables to eBPF, the conntrack entries of closed
// connections that the iptables backend DNATed are removed (their reply tuples would make the
// kernel drop eBPF's direct connections from the same source port), while an established
// DNATed connection and entries without NAT stay. Real kernel, in network namespaces the test
// makes.
func TestFlushNATConntrack(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root, and CI is set: refusing to skip")
		}
		t.Skip("needs root")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	cli, srv := "svcd-c-"+hex.EncodeToString(b), "svcd-s-"+hex.EncodeToString(b)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	for _, ns := range []string{cli, srv} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "-n", cli, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", srv)
	run("ip", "-n", cli, "addr", "add", "10.244.0.2/24", "dev", "eth0")
	run("ip", "-n", srv, "addr", "add", "10.244.0.3/24", "dev", "eth0")
	run("ip", "-n", cli, "link", "set", "eth0", "up")
	run("ip", "-n", srv, "link", "set", "eth0", "up")
	run("ip", "-n", cli, "route", "add", "10.96.0.0/16", "dev", "eth0")
	run("ip", "netns", "exec", cli, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.10", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.244.0.3:8080")

	in := func(ns string, fn func() error) error {
		h, err := netns.GetFromName(ns)
		if err != nil {
			return err
		}
		defer h.Close()
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			if err := netns.Set(h); err != nil {
				errc <- err
				return
			}
			errc <- fn()
		}()
		return <-errc
	}
	var ln net.Listener
	if err := in(srv, func() (err error) { ln, err = net.Listen("tcp4", "10.244.0.3:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	dial := func(addr string) net.Conn {
		t.Helper()
		var c net.Conn
		if err := in(cli, func() (err error) { c, err = net.DialTimeout("tcp4", addr, 2*time.Second); return err }); err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if _, err := fmt.Fprintln(c, "hi"); err != nil {
			t.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		return c
	}
	dial("10.96.0.10:80").Close()   // DNATed, closed by the client: TIME_WAIT
	dial("10.244.0.3:8080").Close() // not NATed, closed: stays
	open := dial("10.96.0.10:80")   // DNATed, established: stays
	defer open.Close()
	time.Sleep(200 * time.Millisecond)
	list := func(args ...string) string {
		var out []byte
		_ = in(cli, func() error {
			out, _ = exec.Command("conntrack", append([]string{"-L", "-p", "tcp"}, args...)...).CombinedOutput()
			return nil
		})
		return string(out)
	}
	if l := list("--dst-nat", "--state", "TIME_WAIT"); !strings.Contains(l, "10.96.0.10") {
		t.Fatalf("no DNATed TIME_WAIT entry to start from:\n%s", l)
	}
	if err := in(cli, func() error { flushNATConntrack(context.Background(), slog.New(slog.DiscardHandler)); return nil }); err != nil {
		t.Fatal(err)
	}
	if l := list("--dst-nat", "--state", "TIME_WAIT"); strings.Contains(l, "10.96.0.10") {
		t.Errorf("the closed DNATed connection's entry is still there:\n%s", l)
	}
	if l := list("--dst-nat", "--state", "ESTABLISHED"); !strings.Contains(l, "10.96.0.10") {
		t.Errorf("the established DNATed connection lost its entry:\n%s", l)
	}
	if l := list("--orig-dst", "10.244.0.3", "--state", "TIME_WAIT"); !strings.Contains(l, "dport=8080") {
		t.Errorf("the entry of a connection without NAT was removed:\n%s", l)
	}
}
