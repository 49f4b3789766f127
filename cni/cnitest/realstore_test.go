package cnitest_test

import (
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/cni/cnitest"
	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/ipam/podadapter"
)

var binDir string

func TestMain(m *testing.M) { os.Exit(cnitest.RunWithBinaries(m, &binDir)) }

// daemon is the pod API over the real persistent ipam store, as the daemon wires it.
type daemon struct {
	store *ipam.Store
	srv   *http.Server
	done  chan error
}

func startDaemon(t *testing.T, stateDir, socket string, podCIDR netip.Prefix) *daemon {
	t.Helper()
	store, err := ipam.Open(stateDir, ipam.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := store.NewPodAllocator([]netip.Prefix{podCIDR}, "node1")
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	ad := podadapter.New(pods)
	l, err := api.Listen(socket)
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	d := &daemon{store: store, done: make(chan error, 1)}
	d.srv = &http.Server{Handler: podserver.New(ad, podserver.Network{Bridge: "svc0", Ranges: ad.Ranges()}, nil), ReadHeaderTimeout: 10 * time.Second}
	go func() { d.done <- d.srv.Serve(l) }()
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) stop() {
	if d.srv == nil {
		return
	}
	d.srv.Close()
	<-d.done
	d.store.Close()
	d.srv = nil
}

// svcproxy-cni against the real ipam store: allocations survive a daemon restart, DEL frees,
// GC keeps the valid attachments, STATUS reports a full range.
func TestWithRealIPAMStore(t *testing.T) {
	cnitest.RequireRoot(t)
	stateDir, socket := t.TempDir(), filepath.Join(t.TempDir(), "svcproxy.sock")
	podCIDR := netip.MustParsePrefix("10.244.1.0/29") // .1 gateway, .2-.6 for pods
	d := startDaemon(t, stateDir, socket, podCIDR)
	node := cnitest.NewNode(t, binDir, socket)

	podA, podB := cnitest.NetnsAdd(t, "a"), cnitest.NetnsAdd(t, "b")
	resA := node.Add(podA, "pod-a", map[string]string{"app": "web"})
	resB := node.Add(podB, "pod-b", nil)
	ipA, ipB := resA.IPs[0].Address.IP, resB.IPs[0].Address.IP
	if !podCIDR.Contains(netip.MustParseAddr(ipA.String())) || ipA.Equal(ipB) || resA.IPs[0].Gateway.String() != "10.244.1.1" {
		t.Fatalf("pod addresses %v and %v (gateway %v), want two in %s via 10.244.1.1", ipA, ipB, resA.IPs[0].Gateway, podCIDR)
	}
	cnitest.Ping(t, podA, netip.MustParseAddr(ipB.String()))

	// Restart the daemon: the allocations are still there and CHECK passes.
	d.stop()
	d = startDaemon(t, stateDir, socket, podCIDR)
	if out, err := node.Cnitool("check", cnitest.NsPath(podA), "pod-a", nil); err != nil {
		t.Fatalf("CHECK after a daemon restart: %v (%s)", err, out)
	}
	resB2 := node.Add(cnitest.NetnsAdd(t, "c"), "pod-c", nil)
	if ip := resB2.IPs[0].Address.IP; ip.Equal(ipA) || ip.Equal(ipB) {
		t.Fatalf("after a restart a new pod got %v, already held by pod A or B", ip)
	}

	// DEL frees A (twice: idempotent); GC keeps B only.
	for range 2 {
		if out, err := node.Cnitool("del", cnitest.NsPath(podA), "pod-a", nil); err != nil {
			t.Fatalf("DEL: %v (%s)", err, out)
		}
	}
	valid := []types.GCAttachment{{ContainerID: cnitest.CnitoolContainerID(cnitest.NsPath(podB)), IfName: "eth0"}}
	if out, cerr := node.Plugin("GC", map[string]any{"cni.dev/valid-attachments": valid}); cerr != nil {
		t.Fatalf("GC: %v (%s)", cerr, out)
	}
	st, err := api.NewClient(socket).CheckPod(cnitest.Ctx(t), api.PodAttachment{ContainerID: valid[0].ContainerID, IfName: "eth0"})
	if err != nil || !strings.HasPrefix(st.IPs[0].Address, ipB.String()+"/") {
		t.Fatalf("pod B after GC: %+v, %v; want it kept", st, err)
	}
	if _, err := api.NewClient(socket).CheckPod(cnitest.Ctx(t), api.PodAttachment{ContainerID: cnitest.CnitoolContainerID(cnitest.NsPath(podA)), IfName: "eth0"}); api.ErrorCode(err) != api.CodeNoAllocation {
		t.Fatalf("pod A after DEL: %v, want no allocation", err)
	}

	// Fill the range: STATUS fails with 50. (A, C freed by DEL/GC are cooling down.)
	for i := 0; ; i++ {
		if _, cerr := node.Plugin("STATUS", nil); cerr != nil {
			if cerr.Code != types.ErrPluginNotAvailable || !strings.Contains(cerr.Msg, podCIDR.String()) {
				t.Fatalf("STATUS with a full range: %v, want code 50 naming %s", cerr, podCIDR)
			}
			break
		}
		if i == 5 {
			t.Fatal("STATUS still ready after filling the range")
		}
		node.Add(cnitest.NetnsAdd(t, fmt.Sprintf("f%d", i)), "", nil)
	}
}
