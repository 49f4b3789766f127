package ebpf

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestEnsureCgroupV2FindsMounted(t *testing.T) {
	p, err := EnsureCgroupV2()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := isMountedFS(p, unix.CGROUP2_SUPER_MAGIC); !ok || err != nil {
		t.Fatalf("EnsureCgroupV2 returned %s, which is not cgroup v2 (%v)", p, err)
	}
}

// TestEnsureCgroupV2Mounts checks the fallback mount on a private directory (the real
// fallback path is left alone).
func TestEnsureCgroupV2Mounts(t *testing.T) {
	requireRoot(t)
	fallback := filepath.Join(t.TempDir(), "cgroupv2")
	t.Cleanup(func() { _ = unix.Unmount(fallback, unix.MNT_DETACH) })
	p, err := ensureCgroupV2([]string{t.TempDir()}, fallback)
	if err != nil {
		t.Fatal(err)
	}
	if p != fallback {
		t.Fatalf("got %s, want the fallback %s", p, fallback)
	}
	if ok, err := isMountedFS(fallback, unix.CGROUP2_SUPER_MAGIC); !ok || err != nil {
		t.Fatalf("fallback is not cgroup v2 after mounting (%v)", err)
	}
	// A second call finds the mount instead of mounting again.
	if p2, err := ensureCgroupV2(nil, fallback); err != nil || p2 != fallback {
		t.Fatalf("second call: %s, %v", p2, err)
	}
}

func TestExternalInterfaces(t *testing.T) {
	requireRoot(t)
	ns := netnsAdd(t, "svce-")
	dev := randName("ve")
	run(t, "ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
	run(t, "ip", "-n", ns, "addr", "add", "172.31.0.7/24", "dev", dev)
	run(t, "ip", "-n", ns, "link", "set", dev, "up")
	run(t, "ip", "-n", ns, "link", "set", dev+"p", "up")
	run(t, "ip", "-n", ns, "route", "add", "default", "via", "172.31.0.254")
	var byAddr, byRoute []string
	var err1, err2 error
	inNetns(t, ns, func() {
		byAddr, err1 = ExternalInterfaces(netip.MustParseAddr("172.31.0.7"))
		byRoute, err2 = ExternalInterfaces()
	})
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if fmt.Sprint(byAddr) != "["+dev+"]" || fmt.Sprint(byRoute) != "["+dev+"]" {
		t.Fatalf("by address %v, by default route %v; want [%s]", byAddr, byRoute, dev)
	}
}

func TestSupported(t *testing.T) {
	requireRoot(t)
	ok, reason := Supported()
	v, err := kernelVersion()
	if err != nil {
		t.Fatal(err)
	}
	_, btfErr := os.Stat("/sys/kernel/btf/vmlinux")
	modern := (v[0] > 6 || (v[0] == 6 && v[1] >= 6)) && btfErr == nil
	if modern && !ok {
		t.Fatalf("kernel %d.%d with BTF reported unsupported: %s", v[0], v[1], reason)
	}
	if reason == "" {
		t.Fatal("no reason given")
	}
	t.Logf("Supported() = %v %q on %d.%d", ok, reason, v[0], v[1])
}

// TestEnsureBPFFS mounts on a private directory (never /sys/fs/bpf) and then finds it mounted,
// also through a pin path below it that does not exist yet.
func TestEnsureBPFFS(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "bpf")
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	if ok, err := isMountedFS(dir, unix.BPF_FS_MAGIC); !ok || err != nil {
		t.Fatalf("%s is not a bpffs after EnsureBPFFS (%v)", dir, err)
	}
	if err := EnsureBPFFS(filepath.Join(dir, "svcproxy")); err != nil {
		t.Fatal(err)
	}
	var mounts []byte
	mounts, _ = os.ReadFile("/proc/self/mountinfo")
	if n := countMounts(string(mounts), dir); n != 1 {
		t.Errorf("%s mounted %d times, want once", dir, n)
	}
}

func countMounts(mountinfo, dir string) int {
	n := 0
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			n++
		}
	}
	return n
}
