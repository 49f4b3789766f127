package ebpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// FallbackCgroupV2Path is where EnsureCgroupV2 mounts a cgroup v2 hierarchy when the host has
// none mounted.
const FallbackCgroupV2Path = "/run/svcproxy/cgroupv2"

// EnsureCgroupV2 returns the root of a mounted cgroup v2 hierarchy: /sys/fs/cgroup (unified
// hosts), /sys/fs/cgroup/unified (hybrid hosts) or FallbackCgroupV2Path. When none is
// mounted it mounts cgroup2 at FallbackCgroupV2Path (there is a single v2 hierarchy, so this
// is the same one systemd would use). It fails when the kernel has no cgroup2 or the mount is
// refused.
func EnsureCgroupV2() (string, error) {
	return ensureCgroupV2([]string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}, FallbackCgroupV2Path)
}

func ensureCgroupV2(candidates []string, fallback string) (string, error) {
	for _, p := range append(candidates, fallback) {
		if ok, _ := isMountedFS(p, unix.CGROUP2_SUPER_MAGIC); ok {
			return p, nil
		}
	}
	if err := os.MkdirAll(fallback, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", fallback, err)
	}
	if err := unix.Mount("cgroup2", fallback, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mount cgroup2 at %s: %w", fallback, err)
	}
	return fallback, nil
}

// isMountedFS reports whether path itself exists and is on a filesystem with the given magic.
func isMountedFS(path string, magic int64) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return int64(st.Type) == magic, nil
}

// ExternalInterfaces returns the names of the interfaces that own one of nodeAddrs (the node's
// underlay addresses); with no address given, the interfaces of the IPv4 default routes (read
// from /proc/thread-self/net/route). These are what Options.Interfaces wants.
func ExternalInterfaces(nodeAddrs ...netip.Addr) ([]string, error) {
	if len(nodeAddrs) == 0 {
		return defaultRouteInterfaces()
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []string
	for i := range ifs {
		addrs, err := ifs[i].Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifs[i].Name, err)
		}
	next:
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(n.IP)
			for _, want := range nodeAddrs {
				if ip.Unmap() == want.Unmap() {
					out = append(out, ifs[i].Name)
					break next
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no interface owns %v", nodeAddrs)
	}
	return out, nil
}

func defaultRouteInterfaces() ([]string, error) {
	data, err := os.ReadFile("/proc/thread-self/net/route")
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" && !seen[f[0]] {
			seen[f[0]] = true
			out = append(out, f[0])
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no IPv4 default route: name the external interfaces explicitly")
	}
	return out, nil
}

// EnsureBPFFS makes sure path (a pin directory such as /sys/fs/bpf/svcproxy, or a mount point)
// lies on a bpffs. When it does not, a bpffs is mounted at /sys/fs/bpf for paths under it, else
// at path itself. Tests must mount their own instance in a private directory instead:
// /sys/fs/bpf is shared by the whole machine.
func EnsureBPFFS(path string) error {
	if ok, err := isFS(path, unix.BPF_FS_MAGIC); err == nil && ok {
		return nil
	}
	mnt := filepath.Clean(path)
	if mnt == "/sys/fs/bpf" || strings.HasPrefix(mnt, "/sys/fs/bpf/") {
		mnt = "/sys/fs/bpf"
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", mnt, err)
	}
	if err := unix.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
	}
	return nil
}

// isFS reports whether path (or, if missing, its nearest existing parent) lies on a
// filesystem with the given magic.
func isFS(path string, magic int64) (bool, error) {
	p := filepath.Clean(path)
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return int64(st.Type) == magic, nil
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return false, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
}

// cgroupID returns the id of the cgroup v2 directory path (its inode number).
func cgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// localIPv4 returns the IPv4 addresses of every interface of the calling network namespace.
func localIPv4() ([]netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for i := range ifs {
		addrs, err := ifs[i].Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifs[i].Name, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
					out = append(out, ip.Unmap())
				}
			}
		}
	}
	return out, nil
}

func firstIPv4(ifc *net.Interface) (netip.Addr, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
				return ip.Unmap(), nil
			}
		}
	}
	return netip.Addr{}, errors.New("no IPv4 address to SNAT with")
}
