package ebpf

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxy/model"
)

type bpftoolObj struct {
	ID     uint32 `json:"id"`
	Name   string `json:"name"`
	ProgID uint32 `json:"prog_id"`
}

// bpftoolList returns `bpftool KIND show` as seen machine-wide.
func bpftoolList(t *testing.T, kind string) []bpftoolObj {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", kind, "show").Output()
	if err != nil {
		t.Fatalf("bpftool %s show: %v", kind, err)
	}
	var objs []bpftoolObj
	if err := json.Unmarshal(out, &objs); err != nil {
		t.Fatalf("bpftool %s show output: %v", kind, err)
	}
	return objs
}

// TestCleanupLeavesNothing attaches everything (cgroup hooks on a test cgroup, TCX on a test
// interface), syncs, runs the UDP socket iterator, and checks with bpftool that Cleanup leaves
// no program, link or map of ours, and no pin.
func TestCleanupLeavesNothing(t *testing.T) {
	requireRoot(t)
	cg := testCgroup(t)
	ns := netnsAdd(t, "svck-")
	dev := randName("vk")
	run(t, "ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
	run(t, "ip", "-n", ns, "addr", "add", "172.31.0.1/24", "dev", dev)
	run(t, "ip", "-n", ns, "link", "set", dev, "up")
	run(t, "ip", "-n", ns, "link", "add", dev+"b", "type", "bridge")
	b, err := newTestBackendIn(t, ns, Options{CgroupPath: cg, Interfaces: []string{dev}, PodInterfaces: []string{dev + "b"}})
	if err != nil {
		t.Fatal(err)
	}
	st := socketLBState("10.244.1.5")
	var serr error
	inNetns(t, ns, func() { _, serr = b.Sync(context.Background(), st, model.Diff(nil, st), true) })
	if serr != nil {
		t.Fatal(serr)
	}
	// A sync that removes a UDP backend runs the socket iterator too.
	st2 := socketLBState("10.244.1.6")
	if _, err := b.Sync(context.Background(), st2, model.Diff(st, st2), false); err != nil {
		t.Fatal(err)
	}

	ours := map[string]map[uint32]bool{"prog": {}, "map": {}, "link": {}}
	for _, p := range b.programs() {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ours["prog"][uint32(id)] = true
	}
	for _, m := range b.maps() {
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ours["map"][uint32(id)] = true
	}
	for _, l := range b.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		ours["link"][uint32(info.ID)] = true
	}
	if len(ours["link"]) != 7 || len(ours["prog"]) != 9 || len(ours["map"]) != 10 {
		t.Fatalf("expected 7 links, 9 programs, 10 maps of ours; have %d, %d, %d", len(ours["link"]), len(ours["prog"]), len(ours["map"]))
	}
	count := func() map[string]int {
		n := map[string]int{}
		for kind := range ours {
			for _, o := range bpftoolList(t, kind) {
				mine := ours[kind][o.ID]
				if kind == "link" {
					mine = mine || ours["prog"][o.ProgID]
				}
				if mine {
					n[kind]++
					if kind != "link" && !strings.HasPrefix(o.Name, "svc_") {
						t.Errorf("%s %d of ours is named %q, not svc_*", kind, o.ID, o.Name)
					}
				}
			}
		}
		return n
	}
	before := count()
	if before["link"] != 7 || before["map"] != 10 || before["prog"] != 9 {
		t.Fatalf("bpftool before Cleanup sees %v of ours", before)
	}
	if err := b.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Programs drop their map references in deferred (RCU) work: wait for it, bounded.
	after := count()
	for i := 0; i < 100 && len(after) != 0; i++ {
		time.Sleep(50 * time.Millisecond)
		after = count()
	}
	if len(after) != 0 {
		t.Fatalf("bpftool after Cleanup still sees %v of ours", after)
	}
	if _, err := os.Stat(b.opts.PinPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin path %s still there: %v", b.opts.PinPath, err)
	}
	// A second Cleanup, and one by path with nothing there, are no-ops.
	if err := b.Cleanup(context.Background()); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

// TestVerifyDetectsTampering removes a pinned link and a pinned map behind the backend's back.
func TestVerifyDetectsTampering(t *testing.T) {
	requireRoot(t)
	cg := testCgroup(t)
	// Loaded exactly as the daemon loads it (no test program).
	b, err := New(Options{CgroupPath: cg, PinPath: privateBPFFS(t), NodeAddresses: []netip.Addr{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Cleanup(context.Background()) })
	st := socketLBState("10.244.1.5")
	if _, err := b.Sync(context.Background(), st, model.Diff(nil, st), true); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Verify(context.Background()); !ok || err != nil {
		t.Fatalf("fresh backend: Verify = %v, %v", ok, err)
	}
	if err := os.Remove(filepath.Join(b.opts.PinPath, linkConnect4)); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Verify(context.Background()); ok || err != nil {
		t.Fatalf("after unpinning a link: Verify = %v, %v; want false", ok, err)
	}
	b2, err := New(Options{CgroupPath: cg, PinPath: b.opts.PinPath, NodeAddresses: []netip.Addr{}})
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if ok, err := b2.Verify(context.Background()); !ok || err != nil {
		t.Fatalf("recreated backend: Verify = %v, %v", ok, err)
	}
	if err := os.Remove(filepath.Join(b2.opts.PinPath, "svc_services")); err != nil {
		t.Fatal(err)
	}
	if ok, err := b2.Verify(context.Background()); ok || err != nil {
		t.Fatalf("after unpinning a map: Verify = %v, %v; want false", ok, err)
	}
	if err := b2.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestNetnsPathsFindsBoundNamespaces: a pod's network namespace bound under a runtime's netns
// directory is found even when no process this daemon can open lives in it (in a DaemonSet
// without the host's PIDs, or without CAP_SYS_PTRACE, /proc/PID/ns/net of pod processes cannot
// be opened: connected UDP sockets in pods were never destroyed on the real-node bench); files
// there that are not namespaces are skipped, and each namespace is listed once.
func TestNetnsPathsFindsBoundNamespaces(t *testing.T) {
	requireRoot(t)
	ns := netnsAdd(t, "svcb-")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "not-a-netns"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	got := netnsPaths([]string{"/run/netns", dir, "/no/such/dir"})
	if got[0] != "/proc/self/ns/net" {
		t.Errorf("own namespace not first: %v", got)
	}
	if !slices.Contains(got, "/run/netns/"+ns) {
		t.Errorf("%s (bound, no process in it) missing from %v", ns, got)
	}
	for _, p := range got {
		if strings.HasPrefix(p, dir) {
			t.Errorf("a file that is not a namespace was listed: %s", p)
		}
	}
	inos := map[uint64]string{}
	for _, p := range got {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			continue
		}
		if prev, dup := inos[st.Ino]; dup {
			t.Errorf("namespace listed twice: %s and %s", prev, p)
		}
		inos[st.Ino] = p
	}
}
