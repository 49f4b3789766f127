// Package ebpf is svcproxy's eBPF data path: it loads the programs of package bpf, pins their
// maps under a bpffs directory, attaches socket-level load balancing to a cgroup v2 and the
// per-packet programs to the node's external interfaces (TCX), and keeps the maps in step with
// the desired model.State by writing only what changed.
//
// Pure parts (PlanService, render, apply ordering) are tested without root; the rest is thin
// code over cilium/ebpf, tested with BPF_PROG_TEST_RUN and in network namespaces.
package ebpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/model"
)

// DefaultPinPath is where the daemon pins maps and links (bpffs must be mounted at
// /sys/fs/bpf, see EnsureBPFFS).
const DefaultPinPath = "/sys/fs/bpf/svcproxy"

// MapSizes sets the capacity of each map; 0 keeps the default in brackets.
type MapSizes struct {
	Services   uint32 // frontend slots: one per frontend plus one per backend of it [262144]
	Backends   uint32 // distinct endpoint address:port:protocol [131072]
	RevNat     uint32 // distinct frontend address:port:protocol, at most 65535 [65536]
	SockRevNat uint32 // sockets translated by socket-LB (LRU) [262144]
	Affinity   uint32 // client x service pairs with sessionAffinity (LRU) [65536]
	Conntrack  uint32 // per-packet flows, two entries each (LRU) [262144]
	SrcRanges  uint32 // loadBalancerSourceRanges prefixes x LB frontends [16384]
}

// Options configures New.
type Options struct {
	// CgroupPath is the cgroup v2 directory the socket hooks attach to: the root of the
	// unified hierarchy in the daemon (see EnsureCgroupV2). Empty: no socket-LB.
	CgroupPath string
	// Interfaces are the node's external (underlay) interfaces that get the per-packet
	// programs, for NodePorts, externalIPs and load-balancer IPs reached from outside.
	// The first IPv4 address of each is used to SNAT (masquerade) the flows entering there.
	Interfaces []string
	// PodInterfaces are the interfaces toward this node's pods (the pod bridge, `bridge` in
	// the config). They get a tc ingress program that translates the replies of local
	// backends to masqueraded flows (which come back to the node address) and routes them
	// out to the client. An interface missing at New (the bridge is made with the first
	// pod) is attached at the first sync after it appears.
	PodInterfaces []string
	// NetnsDirs are where pods' network namespaces are bound (connected UDP sockets to a
	// removed backend are destroyed in each); nil means DefaultNetnsDirs.
	NetnsDirs []string
	// MapSizes overrides map capacities. Changing a size of a pinned map needs a Cleanup.
	MapSizes MapSizes
	// PinPath is a directory on a bpffs where maps and links are pinned, so the data path
	// survives a daemon restart. Required.
	PinPath string
	// NodeAddresses, when set, are the node addresses that accept NodePorts; when nil they
	// are read from the interfaces of the calling network namespace at every full sync.
	NodeAddresses []netip.Addr
	// Logger receives progress and warnings; nil means slog.Default().
	Logger *slog.Logger
	// SNATPorts, when set, are the source ports flows masqueraded by the tc path use. Unset:
	// chosen by New outside the node's net.ipv4.ip_local_port_range (see SNATPortsFor), so
	// the node's own connections never share a port with a masqueraded flow.
	SNATPorts PortRange
	// NodePortRange is the service node port range when known (nodePortRange); SNAT ports
	// chosen below the local port range avoid it.
	NodePortRange PortRange

	// withTestProgram loads svc_test_select too (tests only).
	withTestProgram bool
	// ctTimeouts overrides the conntrack timeouts (tests only).
	ctTimeouts *ctTimeouts
}

// Backend is the eBPF implementation of proxy.Backend.
type Backend struct {
	opts Options
	log  *slog.Logger

	mu   sync.Mutex
	coll *ebpf.Collection
	objs objects
	// testSelect is svc_test_select, loaded only for tests.
	testSelect *ebpf.Program
	links      map[string]link.Link // by pin name
	cgroup     string
	ifaces     []ifaceInfo
	// podIfaces are the PodInterfaces attached so far (by name).
	podIfaces map[string]bool
	// podIfaceMissingLogged are the PodInterfaces whose absence was logged (once each).
	podIfaceMissingLogged map[string]bool
	ids                   *ids
	written               *Entries
	desired               *desired
	addrs                 []netip.Addr
	synced                bool
	closed                bool
	// snatPorts are the source ports masqueraded flows use (load-time constants of svc.c).
	snatPorts PortRange
}

// programs are the programs the data path runs (svcbpf.SvcPrograms without the test entry).
type programs struct {
	SvcConnect4     *ebpf.Program `ebpf:"svc_connect4"`
	SvcSendmsg4     *ebpf.Program `ebpf:"svc_sendmsg4"`
	SvcRecvmsg4     *ebpf.Program `ebpf:"svc_recvmsg4"`
	SvcGetpeername4 *ebpf.Program `ebpf:"svc_getpeername4"`
	SvcTcIngress    *ebpf.Program `ebpf:"svc_tc_ingress"`
	SvcTcEgress     *ebpf.Program `ebpf:"svc_tc_egress"`
	SvcTcPodIngress *ebpf.Program `ebpf:"svc_tc_pod_ingress"`
	SvcDestroyUdp   *ebpf.Program `ebpf:"svc_destroy_udp"`
}

type objects struct {
	programs
	svcbpf.SvcMaps
}

func (o *objects) Close() {
	for _, p := range []*ebpf.Program{o.SvcConnect4, o.SvcSendmsg4, o.SvcRecvmsg4, o.SvcGetpeername4, o.SvcTcIngress, o.SvcTcEgress, o.SvcTcPodIngress, o.SvcDestroyUdp} {
		if p != nil {
			p.Close()
		}
	}
	_ = o.SvcMaps.Close()
}

type ifaceInfo struct {
	name    string
	index   int
	address netip.Addr
}

var _ proxy.Backend = (*Backend)(nil)

// Names of the pinned links, relative to PinPath.
const (
	linkConnect4    = "link_connect4"
	linkSendmsg4    = "link_sendmsg4"
	linkRecvmsg4    = "link_recvmsg4"
	linkGetpeername = "link_getpeername4"
	linkTCXIngress  = "link_tcx_ingress_"
	linkTCXEgress   = "link_tcx_egress_"
	linkTCXPod      = "link_tcx_pod_ingress_"
)

// New loads the programs, creates or reuses the pinned maps under opts.PinPath, and attaches
// the socket hooks to opts.CgroupPath and the tc programs to opts.Interfaces. Links pinned by
// an earlier run are reused and switched to the new programs atomically, so traffic keeps
// flowing across a restart. New fails when PinPath is not on a bpffs, an interface is
// missing or has no IPv4 address, a pinned map has another size or layout (run Cleanup), or
// the kernel refuses a program or an attachment.
func New(opts Options) (*Backend, error) {
	if opts.PinPath == "" {
		return nil, errors.New("ebpf backend: Options.PinPath is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(opts.PinPath, 0o700); err != nil {
		return nil, fmt.Errorf("ebpf backend: create pin directory: %w", err)
	}
	if ok, err := isFS(opts.PinPath, unix.BPF_FS_MAGIC); err != nil || !ok {
		return nil, fmt.Errorf("ebpf backend: pin path %s is not on a bpffs (mount one, see EnsureBPFFS): %v", opts.PinPath, err)
	}
	b := &Backend{opts: opts, log: log, links: map[string]link.Link{}, podIfaces: map[string]bool{}, podIfaceMissingLogged: map[string]bool{}}
	spec, err := loadSpec(opts.MapSizes, opts.withTestProgram)
	if err != nil {
		return nil, err
	}
	// Load-time constants: programs loaded with other values than a previous run's are
	// simply swapped into the pinned links below, like any new program.
	b.snatPorts = b.chooseSNATPorts()
	if err := setConstants(spec, b.snatPorts, opts.ctTimeouts); err != nil {
		return nil, err
	}
	b.coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinPath}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("ebpf backend: pinned maps under %s do not match this version or MapSizes (run `svcproxy cleanup`): %w", opts.PinPath, err)
		}
		return nil, fmt.Errorf("ebpf backend: load programs: %w", err)
	}
	if err := b.coll.Assign(&b.objs); err != nil {
		b.coll.Close()
		return nil, fmt.Errorf("ebpf backend: assign objects: %w", err)
	}
	if opts.withTestProgram {
		b.testSelect = b.coll.DetachProgram(svcbpf.SvcProgSvcTestSelect)
	}
	b.ids = newIDs(b.objs.SvcBackends.MaxEntries())
	if err := b.attach(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// loadSpec returns the collection spec with sizes applied and every map pinned by name.
func loadSpec(sizes MapSizes, withTest bool) (*ebpf.CollectionSpec, error) {
	spec, err := svcbpf.LoadSvc()
	if err != nil {
		return nil, fmt.Errorf("ebpf backend: parse embedded object: %w", err)
	}
	set := func(name string, n uint32) {
		if n > 0 {
			spec.Maps[name].MaxEntries = n
		}
	}
	set(svcbpf.SvcMapSvcServices, sizes.Services)
	set(svcbpf.SvcMapSvcBackends, sizes.Backends)
	set(svcbpf.SvcMapSvcRevnat, sizes.RevNat)
	set(svcbpf.SvcMapSvcSockRevnat, sizes.SockRevNat)
	set(svcbpf.SvcMapSvcAffinity, sizes.Affinity)
	set(svcbpf.SvcMapSvcCt, sizes.Conntrack)
	set(svcbpf.SvcMapSvcSrcRanges, sizes.SrcRanges)
	for name, m := range spec.Maps {
		// Not .rodata (the load-time constants): it belongs to the programs loaded with it,
		// a pinned one would hand a restarted daemon the previous run's values.
		if !strings.HasPrefix(name, ".") {
			m.Pinning = ebpf.PinByName
		}
	}
	if !withTest {
		delete(spec.Programs, svcbpf.SvcProgSvcTestSelect)
	}
	return spec, nil
}

// attach attaches (or re-targets pinned) links for the cgroup hooks and interfaces.
func (b *Backend) attach() error {
	if b.opts.CgroupPath != "" {
		if ok, err := isFS(b.opts.CgroupPath, unix.CGROUP2_SUPER_MAGIC); err != nil || !ok {
			return fmt.Errorf("ebpf backend: %s is not a cgroup v2 directory (see EnsureCgroupV2): %v", b.opts.CgroupPath, err)
		}
		b.cgroup = b.opts.CgroupPath
		hooks := []struct {
			name   string
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{
			{linkConnect4, b.objs.SvcConnect4, ebpf.AttachCGroupInet4Connect},
			{linkSendmsg4, b.objs.SvcSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
			{linkRecvmsg4, b.objs.SvcRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
			{linkGetpeername, b.objs.SvcGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		}
		cgID, err := cgroupID(b.opts.CgroupPath)
		if err != nil {
			return err
		}
		for _, h := range hooks {
			l, err := b.reuseLink(h.name, h.prog, func(info *link.Info) bool {
				c := info.Cgroup()
				return c != nil && c.CgroupId == cgID && info.Type == link.CgroupType
			})
			if err != nil {
				return err
			}
			if l == nil {
				l, err = link.AttachCgroup(link.CgroupOptions{Path: b.opts.CgroupPath, Attach: h.attach, Program: h.prog})
				if err != nil {
					return fmt.Errorf("ebpf backend: attach %s to cgroup %s: %w", h.name, b.opts.CgroupPath, err)
				}
				if err := l.Pin(filepath.Join(b.opts.PinPath, h.name)); err != nil {
					l.Close()
					return fmt.Errorf("ebpf backend: pin %s (the kernel must support bpf_link for cgroups): %w", h.name, err)
				}
			}
			b.links[h.name] = l
		}
	}
	for _, name := range b.opts.Interfaces {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("ebpf backend: interface %q: %w", name, err)
		}
		info := ifaceInfo{name: name, index: ifc.Index}
		for _, dir := range []struct {
			pin    string
			prog   *ebpf.Program
			attach ebpf.AttachType
		}{
			{linkTCXIngress + name, b.objs.SvcTcIngress, ebpf.AttachTCXIngress},
			{linkTCXEgress + name, b.objs.SvcTcEgress, ebpf.AttachTCXEgress},
		} {
			l, err := b.reuseLink(dir.pin, dir.prog, func(li *link.Info) bool {
				t := li.TCX()
				return t != nil && int(t.Ifindex) == ifc.Index && ebpf.AttachType(t.AttachType) == dir.attach
			})
			if err != nil {
				return err
			}
			if l == nil {
				l, err = link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: dir.prog, Attach: dir.attach})
				if err != nil {
					return fmt.Errorf("ebpf backend: attach tc program to %s: %w", name, err)
				}
				if err := l.Pin(filepath.Join(b.opts.PinPath, dir.pin)); err != nil {
					l.Close()
					return fmt.Errorf("ebpf backend: pin %s: %w", dir.pin, err)
				}
			}
			b.links[dir.pin] = l
		}
		b.ifaces = append(b.ifaces, info)
	}
	for _, name := range b.opts.PodInterfaces {
		if err := b.attachPod(name); err != nil {
			return err
		}
	}
	// Links pinned by an earlier run for interfaces or a cgroup no longer configured.
	entries, err := os.ReadDir(b.opts.PinPath)
	if err != nil {
		return fmt.Errorf("ebpf backend: read %s: %w", b.opts.PinPath, err)
	}
	for _, e := range entries {
		n := e.Name()
		if _, ours := b.links[n]; ours || !isLinkPin(n) {
			continue
		}
		if b.pendingPodLink(n) {
			continue // its interface is not there yet; a later full sync attaches it
		}
		if err := removePinnedLink(filepath.Join(b.opts.PinPath, n)); err != nil {
			return err
		}
		b.log.Info("ebpf: detached link no longer configured", "link", n)
	}
	return nil
}

// attachPod attaches svc_tc_pod_ingress to the pod interface name (or re-targets the link
// an earlier run pinned). A missing interface is not an error: it is logged once and tried
// again at every sync until it appears (attachPendingPods).
func (b *Backend) attachPod(name string) error {
	if b.podIfaces[name] {
		return nil
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		if !b.podIfaceMissingLogged[name] {
			b.log.Warn("ebpf: pod interface not found yet; replies of masqueraded flows to local backends need it: attached as soon as it appears", "interface", name, "err", err)
			b.podIfaceMissingLogged[name] = true
		}
		return nil
	}
	if b.podIfaceMissingLogged[name] {
		b.log.Info("ebpf: pod interface appeared", "interface", name)
		delete(b.podIfaceMissingLogged, name)
	}
	pin := linkTCXPod + name
	l, err := b.reuseLink(pin, b.objs.SvcTcPodIngress, func(li *link.Info) bool {
		t := li.TCX()
		return t != nil && int(t.Ifindex) == ifc.Index && ebpf.AttachType(t.AttachType) == ebpf.AttachTCXIngress
	})
	if err != nil {
		return err
	}
	if l == nil {
		l, err = link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: b.objs.SvcTcPodIngress, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("ebpf backend: attach tc program to pod interface %s: %w", name, err)
		}
		if err := l.Pin(filepath.Join(b.opts.PinPath, pin)); err != nil {
			l.Close()
			return fmt.Errorf("ebpf backend: pin %s: %w", pin, err)
		}
	}
	b.links[pin] = l
	b.podIfaces[name] = true
	return nil
}

// attachPendingPods attaches the pod interfaces not attached yet that exist now, and
// re-attaches those whose link lost its interface (the bridge was deleted and made again).
func (b *Backend) attachPendingPods() error {
	for _, name := range b.opts.PodInterfaces {
		if b.podIfaces[name] && !b.podLinkDetached(name) {
			continue
		}
		if b.podIfaces[name] {
			b.log.Info("ebpf: pod interface link detached, attaching again", "interface", name)
			if l := b.links[linkTCXPod+name]; l != nil {
				_ = l.Unpin()
				l.Close()
				delete(b.links, linkTCXPod+name)
			}
			delete(b.podIfaces, name)
		}
		if err := b.attachPod(name); err != nil {
			return err
		}
	}
	return nil
}

// podLinkDetached reports whether the pod link of name is attached to no interface any more.
func (b *Backend) podLinkDetached(name string) bool {
	l := b.links[linkTCXPod+name]
	if l == nil {
		return false
	}
	li, err := l.Info()
	if err != nil {
		return false
	}
	t := li.TCX()
	return t != nil && t.Ifindex == 0
}

// podIfacePending reports whether a pod interface not attached yet exists now.
func (b *Backend) podIfacePending() bool {
	for _, name := range b.opts.PodInterfaces {
		if b.podIfaces[name] {
			continue
		}
		if _, err := net.InterfaceByName(name); err == nil {
			return true
		}
	}
	return false
}

// pendingPodLink reports whether pin names the pod link of a configured pod interface that
// is not attached yet.
func (b *Backend) pendingPodLink(pin string) bool {
	for _, name := range b.opts.PodInterfaces {
		if pin == linkTCXPod+name && !b.podIfaces[name] {
			return true
		}
	}
	return false
}

// reuseLink loads the link pinned under name; when it still points where match says, it is
// switched to prog and returned. A pinned link that no longer matches is removed. nil, nil
// means nothing reusable is pinned.
func (b *Backend) reuseLink(name string, prog *ebpf.Program, match func(*link.Info) bool) (link.Link, error) {
	path := filepath.Join(b.opts.PinPath, name)
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ebpf backend: load pinned link %s: %w", path, err)
	}
	info, err := l.Info()
	if err == nil && match(info) {
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("ebpf backend: switch pinned link %s to the new program: %w", name, err)
		}
		b.log.Info("ebpf: reusing pinned link", "link", name)
		return l, nil
	}
	l.Close()
	if err := removePinnedLink(path); err != nil {
		return nil, err
	}
	return nil, nil
}

func isLinkPin(name string) bool { return len(name) > 5 && name[:5] == "link_" }

// removePinnedLink detaches the link pinned at path and removes the pin.
func removePinnedLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Not a link (or unreadable): remove the pin so nothing is left behind.
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("ebpf: remove pin %s: %w", path, rerr)
		}
		return nil
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("ebpf: detach link %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("ebpf: unpin link %s: %w", path, err)
	}
	return nil
}

// Name implements proxy.Backend.
func (b *Backend) Name() string { return "ebpf" }

// Sync implements proxy.Backend. A full sync (or the first one, or one after a failure, or a
// settings change) reads the maps back from the kernel and replans every service, so it also
// repairs tampering and adopts maps left by an earlier run; a partial sync replans only the
// services in changes. Either way only entries that differ are written, in an order that never
// shows a reader a half-written service. Backends that disappeared get their connected UDP
// sockets destroyed. Sync fails when the kernel refuses a map write; it then leaves the maps
// consistent (old or new per frontend) and the next sync is full.
func (b *Backend) Sync(ctx context.Context, st *model.State, changes model.Changes, full bool) (proxy.SyncResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return proxy.SyncResult{}, errors.New("ebpf backend: Sync after Close")
	}
	full = full || !b.synced || changes.Settings
	res := proxy.SyncResult{Full: full}
	b.synced = false
	kernel := kernelMaps{&b.objs.SvcMaps}
	var ar applyResult
	var err error
	var svcs []model.ServiceKey
	if !full {
		// The pod bridge appears with the first pod svcproxy-cni wires, usually after the
		// daemon started; its first endpoints bring a sync, and the program goes on at once
		// rather than at the next full sync (masqueraded flows to local backends need it).
		if err := b.attachPendingPods(); err != nil {
			return res, err
		}
	}
	if full {
		if err := b.refreshNode(st); err != nil {
			return res, err
		}
		have, err := b.readMaps()
		if err != nil {
			return res, err
		}
		b.written = have
		b.ids = newIDs(b.objs.SvcBackends.MaxEntries())
		b.ids.adopt(have)
		b.desired = newDesired()
		for _, s := range st.Services {
			if _, err := b.desired.add(st, s, b.addrs, b.ids, b.log); err != nil {
				return res, fmt.Errorf("ebpf backend: %w", err)
			}
			svcs = append(svcs, s.Key)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		ar, err = apply(kernel, b.written, b.desired.want)
		if err == nil {
			b.ids.keep(b.desired.want)
		}
	} else {
		tc := newTouched()
		keys := sortedKeys(changes.Services)
		// Remove every changed service first, so a frontend moving between two of them is free.
		for _, k := range keys {
			if old := b.desired.remove(k); old != nil {
				tc.add(old)
			}
		}
		for _, k := range keys {
			s := st.Service(k)
			if s == nil {
				continue
			}
			e, err := b.desired.add(st, s, b.addrs, b.ids, b.log)
			if err != nil {
				return res, fmt.Errorf("ebpf backend: %w", err)
			}
			tc.add(e)
			svcs = append(svcs, k)
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		wantV, haveV := views(tc, b.desired.want, b.written)
		before := copyEntries(haveV)
		ar, err = apply(kernel, haveV, wantV)
		mergeBack(b.written, haveV, before)
		if err == nil {
			b.ids.release(tc, b.desired.want)
		}
	}
	res.Objects = ar.objects
	for _, k := range svcs {
		for sk := range b.desired.perSvc[k].Services {
			if ar.changed[frontendOf(sk)] {
				res.ServicesWritten++
				break
			}
		}
	}
	if err != nil {
		return res, fmt.Errorf("ebpf backend: %w", err)
	}
	b.synced = true
	var gone []BackendKey
	for _, v := range ar.removedBackends {
		if v.Proto == protoUDP {
			gone = append(gone, BackendKey{Addr: addrFromBE(v.Addr), Port: ntohs(v.Port), Proto: v.Proto})
		}
	}
	if len(gone) > 0 {
		n, err := b.destroyUDP(ctx, gone)
		if err != nil {
			b.log.Warn("ebpf: destroying UDP sockets connected to removed backends failed", "backends", len(gone), "err", err)
		} else if n > 0 {
			b.log.Info("ebpf: destroyed UDP sockets connected to removed backends", "sockets", n, "backends", len(gone))
		}
	}
	return res, nil
}

// refreshNode re-reads node addresses and the SNAT address of each interface, writes the
// cluster's pod ranges, and attaches pod interfaces that were missing so far.
func (b *Backend) refreshNode(st *model.State) error {
	if err := b.attachPendingPods(); err != nil {
		return err
	}
	if err := b.writeClusterCIDRs(st.ClusterCIDRs); err != nil {
		return err
	}
	if b.opts.NodeAddresses != nil {
		b.addrs = append([]netip.Addr(nil), b.opts.NodeAddresses...)
	} else {
		addrs, err := localIPv4()
		if err != nil {
			return fmt.Errorf("ebpf backend: read node addresses: %w", err)
		}
		b.addrs = addrs
	}
	want := map[uint32]uint32{}
	for i := range b.ifaces {
		ifc, err := net.InterfaceByName(b.ifaces[i].name)
		if err != nil {
			return fmt.Errorf("ebpf backend: interface %q: %w", b.ifaces[i].name, err)
		}
		a, err := firstIPv4(ifc)
		if err != nil {
			return fmt.Errorf("ebpf backend: interface %q: %w", b.ifaces[i].name, err)
		}
		b.ifaces[i].address, b.ifaces[i].index = a, ifc.Index
		want[uint32(ifc.Index)] = addrToBE(a)
	}
	var k, v uint32
	var stale []uint32
	it := b.objs.SvcIfaddrs.Iterate()
	for it.Next(&k, &v) {
		if w, ok := want[k]; !ok || w != v {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf backend: read svc_ifaddrs: %w", err)
	}
	for _, k := range stale {
		if err := b.objs.SvcIfaddrs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("ebpf backend: delete svc_ifaddrs[%d]: %w", k, err)
		}
	}
	for k, v := range want {
		if err := b.objs.SvcIfaddrs.Put(k, v); err != nil {
			return fmt.Errorf("ebpf backend: write svc_ifaddrs[%d]: %w", k, err)
		}
	}
	return nil
}

// writeClusterCIDRs makes svc_cluster_cidrs hold exactly the IPv4 prefixes of cidrs.
func (b *Backend) writeClusterCIDRs(cidrs []netip.Prefix) error {
	want := map[svcbpf.SvcCidrKey]bool{}
	for _, p := range cidrs {
		if p.Addr().Is4() {
			p = p.Masked()
			want[svcbpf.SvcCidrKey{Prefixlen: uint32(p.Bits()), Addr: addrToBE(p.Addr())}] = true
		}
	}
	m := b.objs.SvcClusterCidrs
	if len(want) > int(m.MaxEntries()) {
		return fmt.Errorf("ebpf backend: %d clusterCIDR prefixes, at most %d are supported", len(want), m.MaxEntries())
	}
	var k svcbpf.SvcCidrKey
	var v uint8
	var stale []svcbpf.SvcCidrKey
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("ebpf backend: read svc_cluster_cidrs: %w", err)
	}
	for _, k := range stale {
		if err := ignoreMissing(m.Delete(&k)); err != nil {
			return fmt.Errorf("ebpf backend: delete svc_cluster_cidrs %v: %w", k, err)
		}
	}
	for k := range want {
		if err := m.Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("ebpf backend: write svc_cluster_cidrs %s/%d: %w", addrFromBE(k.Addr), k.Prefixlen, err)
		}
	}
	return nil
}

// readMaps returns what the service, backend and rev-NAT maps hold now.
func (b *Backend) readMaps() (*Entries, error) {
	e := newEntries()
	var sk svcKey
	var sv svcValue
	it := b.objs.SvcServices.Iterate()
	for it.Next(&sk, &sv) {
		e.Services[sk] = sv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf backend: read svc_services: %w", err)
	}
	var bid uint32
	var bv backendVal
	it = b.objs.SvcBackends.Iterate()
	for it.Next(&bid, &bv) {
		e.Backends[bid] = bv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf backend: read svc_backends: %w", err)
	}
	var rid uint16
	var rv revNatValue
	it = b.objs.SvcRevnat.Iterate()
	for it.Next(&rid, &rv) {
		e.RevNat[rid] = rv
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf backend: read svc_revnat: %w", err)
	}
	var rk rangeKey
	var one uint8
	it = b.objs.SvcSrcRanges.Iterate()
	for it.Next(&rk, &one) {
		e.Ranges[rk] = one
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ebpf backend: read svc_src_ranges: %w", err)
	}
	return e, nil
}

// Verify implements proxy.Backend: every link is still pinned, attached where it should be
// and running this process's program, and every map is still pinned as the one in use.
func (b *Backend) Verify(ctx context.Context) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false, nil
	}
	if b.podIfacePending() {
		b.log.Info("ebpf: a pod interface appeared: full sync to attach it")
		return false, nil
	}
	for name, l := range b.links {
		pinned, err := link.LoadPinnedLink(filepath.Join(b.opts.PinPath, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			b.log.Warn("ebpf: pinned link missing", "link", name)
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("ebpf verify: load pinned link %s: %w", name, err)
		}
		pi, err := pinned.Info()
		pinned.Close()
		if err != nil {
			return false, fmt.Errorf("ebpf verify: link %s info: %w", name, err)
		}
		li, err := l.Info()
		if err != nil {
			return false, fmt.Errorf("ebpf verify: link %s info: %w", name, err)
		}
		if pi.ID != li.ID {
			b.log.Warn("ebpf: pinned link replaced", "link", name)
			return false, nil
		}
		if t := pi.TCX(); t != nil && t.Ifindex == 0 {
			b.log.Warn("ebpf: tc link detached (interface gone?)", "link", name)
			return false, nil
		}
		if c := pi.Cgroup(); c != nil && c.CgroupId == 0 {
			b.log.Warn("ebpf: cgroup link detached", "link", name)
			return false, nil
		}
	}
	for name, m := range b.maps() {
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(b.opts.PinPath, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			b.log.Warn("ebpf: pinned map missing", "map", name)
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("ebpf verify: load pinned map %s: %w", name, err)
		}
		pi, err1 := pinned.Info()
		pinned.Close()
		mi, err2 := m.Info()
		if err := errors.Join(err1, err2); err != nil {
			return false, fmt.Errorf("ebpf verify: map %s info: %w", name, err)
		}
		pid, _ := pi.ID()
		mid, _ := mi.ID()
		if pid != mid {
			b.log.Warn("ebpf: pinned map replaced", "map", name)
			return false, nil
		}
	}
	return ctx.Err() == nil, ctx.Err()
}

// maps returns the loaded maps by name.
func (b *Backend) maps() map[string]*ebpf.Map {
	o := &b.objs.SvcMaps
	return map[string]*ebpf.Map{
		svcbpf.SvcMapSvcServices: o.SvcServices, svcbpf.SvcMapSvcBackends: o.SvcBackends,
		svcbpf.SvcMapSvcRevnat: o.SvcRevnat, svcbpf.SvcMapSvcSockRevnat: o.SvcSockRevnat,
		svcbpf.SvcMapSvcAffinity: o.SvcAffinity, svcbpf.SvcMapSvcCt: o.SvcCt,
		svcbpf.SvcMapSvcIfaddrs: o.SvcIfaddrs, svcbpf.SvcMapSvcDestroy: o.SvcDestroy,
		svcbpf.SvcMapSvcSrcRanges: o.SvcSrcRanges, svcbpf.SvcMapSvcClusterCidrs: o.SvcClusterCidrs,
	}
}

// programs returns the loaded programs (svc_test_select only when loaded for tests).
func (b *Backend) programs() []*ebpf.Program {
	o := &b.objs.programs
	ps := []*ebpf.Program{o.SvcConnect4, o.SvcSendmsg4, o.SvcRecvmsg4, o.SvcGetpeername4, o.SvcTcIngress, o.SvcTcEgress, o.SvcTcPodIngress, o.SvcDestroyUdp}
	if b.testSelect != nil {
		ps = append(ps, b.testSelect)
	}
	return ps
}

// Cleanup implements proxy.Backend: it detaches every link, unpins every map and link, removes
// the pin directory and releases the programs, leaving nothing behind. The Backend cannot be
// used afterwards.
func (b *Backend) Cleanup(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	for name, l := range b.links {
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", name, err))
		}
	}
	b.closeLocked()
	if err := CleanupPinned(ctx, b.opts.PinPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Close releases this process's handles but leaves the pinned maps and links, so traffic
// keeps flowing while the daemon is stopped. Use it on daemon shutdown; Cleanup to remove.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closeLocked()
	return nil
}

func (b *Backend) closeLocked() {
	if b.closed {
		return
	}
	for _, l := range b.links {
		l.Close()
	}
	b.links = map[string]link.Link{}
	b.objs.Close()
	if b.testSelect != nil {
		b.testSelect.Close()
	}
	if b.coll != nil {
		b.coll.Close()
	}
	b.closed = true
}

// CleanupPinned removes everything svcproxy pinned under pinPath: links are detached, maps
// and links unpinned, and the directory removed. It needs no running Backend (the `svcproxy
// cleanup` command uses it) and succeeds when nothing is there.
func CleanupPinned(ctx context.Context, pinPath string) error {
	entries, err := os.ReadDir(pinPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ebpf cleanup: read %s: %w", pinPath, err)
	}
	var errs []error
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := filepath.Join(pinPath, e.Name())
		if isLinkPin(e.Name()) {
			if err := removePinnedLink(p); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("ebpf cleanup: unpin %s: %w", p, err))
		}
	}
	if err := os.Remove(pinPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("ebpf cleanup: remove %s: %w", pinPath, err))
	}
	return errors.Join(errs...)
}

// kernelMaps writes the real maps.
type kernelMaps struct{ o *svcbpf.SvcMaps }

func (k kernelMaps) putService(key svcKey, v svcValue) error {
	return k.o.SvcServices.Put(&key, &v)
}
func (k kernelMaps) delService(key svcKey) error {
	return ignoreMissing(k.o.SvcServices.Delete(&key))
}
func (k kernelMaps) putBackend(id uint32, v backendVal) error { return k.o.SvcBackends.Put(id, &v) }
func (k kernelMaps) delBackend(id uint32) error {
	return ignoreMissing(k.o.SvcBackends.Delete(id))
}
func (k kernelMaps) putRevNat(id uint16, v revNatValue) error { return k.o.SvcRevnat.Put(id, &v) }
func (k kernelMaps) delRevNat(id uint16) error {
	return ignoreMissing(k.o.SvcRevnat.Delete(id))
}

func (k kernelMaps) putRange(key rangeKey) error { return k.o.SvcSrcRanges.Put(&key, uint8(1)) }
func (k kernelMaps) delRange(key rangeKey) error {
	return ignoreMissing(k.o.SvcSrcRanges.Delete(&key))
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}
