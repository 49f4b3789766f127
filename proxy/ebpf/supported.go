package ebpf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Supported reports whether this kernel can run the eBPF backend, and if not, why (for
// `mode: auto`, which then falls back to iptables and logs the reason). It checks, in order:
// kernel >= 6.6 (TCX links); BTF at /sys/kernel/btf/vmlinux; cgroup v2 in /proc/filesystems;
// the program types cgroup sock_addr and sched_cls; LRU hash maps; the
// helpers get_socket_cookie, get_netns_cookie and set_retval in cgroup sock_addr programs; the
// bpf_sock_destroy kfunc (6.5+); and finally that the verifier accepts every program of the
// collection (loaded once, unpinned, and released). When ok, reason says what was found.
func Supported() (ok bool, reason string) {
	v, err := kernelVersion()
	if err != nil {
		return false, fmt.Sprintf("cannot read kernel version: %v", err)
	} else if v[0] < 6 || (v[0] == 6 && v[1] < 6) {
		return false, fmt.Sprintf("kernel %d.%d is older than 6.6 (TCX links, bpf_sock_destroy)", v[0], v[1])
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return false, "kernel BTF missing (/sys/kernel/btf/vmlinux): CONFIG_DEBUG_INFO_BTF is needed"
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !bytes.Contains(fs, []byte("cgroup2")) {
		return false, "kernel has no cgroup2 filesystem"
	}
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.SchedCLS} {
		if err := features.HaveProgramType(pt); err != nil {
			return false, fmt.Sprintf("program type %s unavailable: %v", pt, err)
		}
	}
	if err := features.HaveMapType(ebpf.LRUHash); err != nil {
		return false, fmt.Sprintf("LRU hash maps unavailable: %v", err)
	}
	for _, h := range []asm.BuiltinFunc{asm.FnGetSocketCookie, asm.FnGetNetnsCookie, asm.FnSetRetval} {
		if err := features.HaveProgramHelper(ebpf.CGroupSockAddr, h); err != nil {
			return false, fmt.Sprintf("helper %s unavailable to cgroup sock_addr programs: %v", h, err)
		}
	}
	kspec, err := btf.LoadKernelSpec()
	if err != nil {
		return false, fmt.Sprintf("cannot read kernel BTF: %v", err)
	}
	var fn *btf.Func
	if err := kspec.TypeByName("bpf_sock_destroy", &fn); err != nil {
		return false, "kfunc bpf_sock_destroy missing (kernel 6.5+ needed to reset connected UDP sockets)"
	}
	spec, err := loadSpec(MapSizes{}, false)
	if err != nil {
		return false, err.Error()
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
		if m.Type == ebpf.LRUHash || m.Type == ebpf.Hash {
			m.MaxEntries = 16 // a trial load needs no capacity
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return false, fmt.Sprintf("verifier rejected a program: %v", ve)
		}
		return false, fmt.Sprintf("loading the programs failed: %v", err)
	}
	coll.Close()
	return true, fmt.Sprintf("kernel %d.%d: cgroup v2 socket hooks, TCX, BTF, bpf_sock_destroy; all programs verified", v[0], v[1])
}

func kernelVersion() ([2]int, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return [2]int{}, err
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return [2]int{}, fmt.Errorf("unexpected release %q", rel)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return [2]int{}, fmt.Errorf("unexpected release %q", rel)
	}
	return [2]int{major, minor}, nil
}
