package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/svcproxy/svcproxy/api"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// VersionInfo is the plugin's answer to VERSION.
func VersionInfo() version.PluginInfo { return version.PluginSupports(SupportedVersions...) }

// About is the plugin's one-line description, printed when it is run by hand.
const About = "svcproxy-cni: pod IPs from the svcproxy daemon, pod veth on the node bridge"

// DefaultTimeout bounds one command's talk with the daemon.
const DefaultTimeout = 30 * time.Second

// Plugin implements the CNI commands over the daemon's pod API. The zero value is ready to use.
type Plugin struct {
	// Timeout bounds each command's talk with the daemon; 0 means DefaultTimeout.
	Timeout time.Duration
	// Stdout receives ADD's result; nil means os.Stdout.
	Stdout io.Writer
	// Stderr receives warnings (e.g. a release that failed while undoing a failed ADD); nil
	// means os.Stderr.
	Stderr io.Writer
}

// Funcs returns the commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func (p *Plugin) context() (context.Context, context.CancelFunc) {
	t := p.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	return context.WithTimeout(context.Background(), t)
}

func (p *Plugin) stdout() io.Writer {
	if p.Stdout != nil {
		return p.Stdout
	}
	return os.Stdout
}

func (p *Plugin) warnf(format string, args ...any) {
	w := p.Stderr
	if w == nil {
		w = os.Stderr
	}
	fmt.Fprintf(w, "svcproxy-cni: warning: "+format+"\n", args...)
}

// daemonError turns an error of the pod API into a CNI error: the daemon's code when it gave
// one, ErrTryAgainLater when it is unreachable, ErrInternal otherwise.
func daemonError(op string, err error) error {
	var e *api.Error
	switch {
	case errors.As(err, &e):
		code := uint(e.Code)
		if code == 0 {
			code = types.ErrInternal
		}
		return types.NewError(code, fmt.Sprintf("svcproxy-cni: %s: %s", op, e.Message), "")
	case errors.Is(err, api.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("svcproxy-cni: %s: svcproxy daemon not reachable", op), err.Error())
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("svcproxy-cni: %s", op), err.Error())
}

// ErrIfaceExists: ADD found the pod's interface already there (ADD without DEL in between).
var ErrIfaceExists = errors.New("interface already exists in the pod")

// Add allocates the pod's addresses from the daemon, wires the pod to the node bridge and
// prints the result. When anything fails after the allocation, the veth is removed and the
// addresses released (unless the pod's interface already existed: then it is left alone).
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pod, err := ParsePodArgs(args.Args)
	if err != nil {
		return err
	}
	ctx, cancel := p.context()
	defer cancel()
	c := api.NewClient(conf.APISocket)
	att := api.PodAttachment{ContainerID: args.ContainerID, IfName: args.IfName}
	alloc, err := c.AllocatePod(ctx, &api.PodAllocateRequest{
		ContainerID: args.ContainerID, IfName: args.IfName,
		PodNamespace: pod.Namespace, PodName: pod.Name, PodUID: pod.UID,
		Labels: conf.RuntimeConfig.Labels, Netns: args.Netns,
	})
	if err != nil {
		return daemonError("allocating pod IP", err)
	}
	hostVeth := HostVethName(args.ContainerID, args.IfName)
	keep := false // the pod's interface was there before: leave it and its address alone
	defer func() {
		if err == nil || keep {
			return
		}
		if terr := Teardown(args.Netns, args.IfName, hostVeth); terr != nil {
			p.warnf("undoing failed ADD of %s/%s: %v", args.ContainerID, args.IfName, terr)
			return // the address stays allocated while the veth may still carry it
		}
		rctx, rcancel := p.context()
		defer rcancel()
		if rerr := c.ReleasePod(rctx, att); rerr != nil {
			p.warnf("undoing failed ADD of %s/%s: releasing its pod IP: %v", args.ContainerID, args.IfName, rerr)
		}
	}()
	res, err := wire(alloc, args.Netns, args.IfName, hostVeth)
	if err != nil {
		if !errors.Is(err, ErrIfaceExists) {
			return fmt.Errorf("svcproxy-cni: wiring %s/%s: %w", args.ContainerID, args.IfName, err)
		}
		keep = true
		return types.NewError(types.ErrInternal, "svcproxy-cni: "+err.Error(), "delete the attachment first")
	}
	out, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, "svcproxy-cni: converting result", err.Error())
	}
	return out.PrintTo(p.stdout())
}

// wire applies an allocation to the kernel and returns its result.
func wire(alloc *api.PodAllocation, netns, ifName, hostVeth string) (*current.Result, error) {
	w, err := ParseAllocation(alloc)
	if err != nil {
		return nil, err
	}
	br, err := EnsureBridge(w.Bridge, w.MTU, w.GatewayPrefixes())
	if err != nil {
		return nil, err
	}
	podNS, err := ns.GetNS(netns)
	if err != nil {
		return nil, fmt.Errorf("opening pod netns %q: %w", netns, err)
	}
	defer podNS.Close()
	if exists, err := linkExistsIn(podNS, ifName); err != nil {
		return nil, err
	} else if exists {
		return nil, fmt.Errorf("%s in %s: %w", ifName, netns, ErrIfaceExists)
	}
	host, cont, err := CreateVeth(podNS, ifName, hostVeth, w.MTU, w.Bridge, w.PodMAC())
	if err != nil {
		return nil, err
	}
	res := BuildResult(w, br, host, cont)
	// The bridge is the pods' gateway: the node forwards their traffic (as the reference
	// bridge plugin does with isGateway).
	if err := ip.EnableForward(res.IPs); err != nil {
		return nil, fmt.Errorf("enabling IP forwarding on the node: %w", err)
	}
	if err := ConfigurePod(podNS, ifName, res); err != nil {
		return nil, err
	}
	return res, nil
}

// Del removes the pod's veth and releases its addresses. An unknown attachment, a missing
// interface or a missing netns are fine: DEL succeeds.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := Teardown(args.Netns, args.IfName, HostVethName(args.ContainerID, args.IfName)); err != nil {
		return fmt.Errorf("svcproxy-cni: DEL %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	ctx, cancel := p.context()
	defer cancel()
	if err := api.NewClient(conf.APISocket).ReleasePod(ctx, api.PodAttachment{ContainerID: args.ContainerID, IfName: args.IfName}); err != nil {
		return daemonError("releasing pod IP", err)
	}
	return nil
}

// Check verifies that the daemon still holds the allocation of prevResult and that the
// kernel carries it: pod interface, addresses, default routes, host veth on the bridge.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "svcproxy-cni: CHECK needs prevResult", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "svcproxy-cni: cannot convert prevResult", err.Error())
	}
	ctx, cancel := p.context()
	defer cancel()
	alloc, err := api.NewClient(conf.APISocket).CheckPod(ctx, api.PodAttachment{ContainerID: args.ContainerID, IfName: args.IfName})
	if err != nil {
		return daemonError("checking pod IP", err)
	}
	w, err := ParseAllocation(alloc)
	if err != nil {
		return fmt.Errorf("svcproxy-cni: CHECK %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	if err := SameAddresses(prev, w); err != nil {
		return fmt.Errorf("svcproxy-cni: CHECK %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	want := BuildResult(w, Iface{}, Iface{}, Iface{})
	if err := Verify(args.Netns, args.IfName, HostVethName(args.ContainerID, args.IfName), w.Bridge, want); err != nil {
		return fmt.Errorf("svcproxy-cni: CHECK %s/%s: %w", args.ContainerID, args.IfName, err)
	}
	return nil
}

// GC asks the daemon to free every allocation not in cni.dev/valid-attachments. A config
// without that key (as from `cnitool gc`) means no attachment is valid.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]api.PodAttachment, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.PodAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := p.context()
	defer cancel()
	if _, err := api.NewClient(conf.APISocket).GCPods(ctx, valid); err != nil {
		return daemonError("garbage-collecting pod IPs", err)
	}
	return nil
}

// Status fails with ErrPluginNotAvailable (50) when the daemon is unreachable or says the pod
// network cannot serve ADD (e.g. the range is full).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	ctx, cancel := p.context()
	defer cancel()
	st, err := api.NewClient(conf.APISocket).PodStatus(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "svcproxy-cni: svcproxy daemon not available at "+conf.APISocket, err.Error())
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "svcproxy-cni: pod network not ready: "+st.Reason, "")
	}
	return nil
}
