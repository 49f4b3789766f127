package ebpf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
)

// destroyUDP destroys the connected UDP sockets that socket-LB sent to one of gone, in every
// network namespace that has a process (pods included). It returns how many it destroyed.
// The iterator program only touches sockets whose cookie socket-LB recorded for that backend,
// so other sockets talking to the same address are left alone.
func (b *Backend) destroyUDP(ctx context.Context, gone []BackendKey) (int, error) {
	m := b.objs.SvcDestroy
	var keys []svcbpf.SvcDestroyKey
	for _, g := range gone {
		k := svcbpf.SvcDestroyKey{Addr: addrToBE(g.Addr), Port: htons(g.Port), Proto: g.Proto}
		if err := m.Put(&k, uint8(1)); err != nil {
			return 0, fmt.Errorf("write svc_destroy: %w", err)
		}
		keys = append(keys, k)
	}
	defer func() {
		for _, k := range keys {
			_ = m.Delete(&k)
		}
	}()
	it, err := link.AttachIter(link.IterOptions{Program: b.objs.SvcDestroyUdp})
	if err != nil {
		return 0, fmt.Errorf("create UDP socket iterator: %w", err)
	}
	defer it.Close()

	total := 0
	var errs []error
	dirs := b.opts.NetnsDirs
	if dirs == nil {
		dirs = DefaultNetnsDirs()
	}
	for _, ns := range netnsPaths(dirs) {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := runIterIn(ns, it)
		if err != nil {
			// A process may exit while we walk; its namespace is then gone too.
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netns %s: %w", ns, err))
			}
			continue
		}
		total += n
	}
	return total, errors.Join(errs...)
}

// DefaultNetnsDirs are the directories where container runtimes bind-mount pods' network
// namespaces (containerd's and CRI-O's default, and `ip netns`). The DaemonSet mounts
// /run/netns with HostToContainer propagation so that pods made after the daemon started
// are seen too.
func DefaultNetnsDirs() []string { return []string{"/run/netns", "/var/run/netns"} }

// netnsPaths returns one path per distinct network namespace, the caller's own first: the
// namespaces bound under dirs (pods: reachable without the host's PIDs and without
// CAP_SYS_PTRACE, which opening another process's /proc/PID/ns/net needs) and those of the
// processes this daemon can see and open (/proc/PID/ns/net: host processes, and every
// process when it runs on the host as root).
func netnsPaths(dirs []string) []string {
	out := []string{"/proc/self/ns/net"}
	seen := map[uint64]bool{}
	var st unix.Stat_t
	if unix.Stat(out[0], &st) == nil {
		seen[st.Ino] = true
	}
	var candidates []string
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			candidates = append(candidates, filepath.Join(d, e.Name()))
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	candidates = append(candidates, procs...)
	for _, p := range candidates {
		// Stat follows the /proc link, which fails (EACCES) for processes whose namespaces
		// this daemon may not open; a file under dirs that is not a namespace (not on
		// nsfs) is skipped too.
		var fs unix.Statfs_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] || unix.Statfs(p, &fs) != nil || fs.Type != unix.NSFS_MAGIC {
			continue
		}
		seen[st.Ino] = true
		out = append(out, p)
	}
	return out
}

// runIterIn opens the iterator while the thread is in network namespace ns (the UDP
// iterator walks the namespace of whoever opens it) and runs it to the end. The result is the
// number of sockets destroyed.
func runIterIn(ns string, it *link.Iter) (int, error) {
	type result struct {
		n   int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is left locked (and so discarded) if it cannot return home.
		r, restored, err := openIn(ns, it)
		if restored {
			runtime.UnlockOSThread()
		}
		if err != nil {
			ch <- result{0, err}
			return
		}
		defer r.Close()
		data, err := io.ReadAll(r)
		ch <- result{len(data), err}
	}()
	res := <-ch
	return res.n, res.err
}

func openIn(ns string, it *link.Iter) (io.ReadCloser, bool, error) {
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, true, err
	}
	defer self.Close()
	target, err := os.Open(ns)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, true, fmt.Errorf("setns: %w", err)
	}
	r, openErr := it.Open()
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		if r != nil {
			r.Close()
		}
		return nil, false, fmt.Errorf("return to own netns: %w", err)
	}
	if openErr != nil {
		return nil, true, fmt.Errorf("open iterator: %w", openErr)
	}
	return r, true, nil
}
