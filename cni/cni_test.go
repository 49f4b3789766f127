package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/api/podserver/podservertest"
)

func TestParseConfig(t *testing.T) {
	conf, err := ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "svcproxy", "type": "svcproxy-cni",
		"capabilities": {"labels": true}, "runtimeConfig": {"labels": {"app": "web"}},
		"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.APISocket != DefaultAPISocket || conf.RuntimeConfig.Labels["app"] != "web" || conf.Name != "svcproxy" ||
		len(conf.ValidAttachments) != 1 || conf.ValidAttachments[0].IfName != "eth0" {
		t.Fatalf("config = %+v", conf)
	}
	conf, err = ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "n", "apiSocket": "/tmp/x.sock",
		"prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if conf.APISocket != "/tmp/x.sock" || err != nil || len(prev.IPs) != 1 || prev.IPs[0].Address.String() != "10.244.1.5/24" {
		t.Fatalf("config = %+v, prevResult %v (%v)", conf, prev, err)
	}
	for _, bad := range []string{`{`, `{"runtimeConfig": {"labels": {"app": 1}}}`} {
		_, err := ParseConfig([]byte(bad))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("ParseConfig(%s) = %v, want code %d", bad, err, types.ErrInvalidNetworkConfig)
		}
	}
}

func TestParsePodArgs(t *testing.T) {
	p, err := ParsePodArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0c1f-77;;")
	if err != nil || p != (PodArgs{Namespace: "kube-system", Name: "dns-1", UID: "0c1f-77"}) {
		t.Fatalf("ParsePodArgs = %+v, %v", p, err)
	}
	if p, err := ParsePodArgs(""); err != nil || p != (PodArgs{}) {
		t.Fatalf("empty CNI_ARGS: %+v, %v", p, err)
	}
	if _, err := ParsePodArgs("K8S_POD_NAME"); err == nil || !strings.Contains(err.Error(), "K8S_POD_NAME") {
		t.Fatalf("pair without '=': %v, want an error naming it", err)
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("cnitool-0123456789abcdef0123", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, "svc") || a != HostVethName("cnitool-0123456789abcdef0123", "eth0") {
		t.Fatalf("HostVethName = %q, want 15 stable characters starting svc", a)
	}
	if a == HostVethName("cnitool-0123456789abcdef0123", "net1") || a == HostVethName("cnitool-0123456789abcdef0124", "eth0") {
		t.Fatal("different attachments share a host veth name")
	}
}

func TestParseAllocationAndBuildResult(t *testing.T) {
	alloc := &api.PodAllocation{Bridge: "svc0", MTU: 1450, IPs: []api.PodIP{
		{Address: "10.244.1.5/24", Gateway: "10.244.1.1"},
		{Address: "fd00:10:244:1::5/64", Gateway: "fd00:10:244:1::1"},
	}}
	w, err := ParseAllocation(alloc)
	if err != nil {
		t.Fatal(err)
	}
	gws := w.GatewayPrefixes()
	if len(gws) != 2 || gws[0] != netip.MustParsePrefix("10.244.1.1/24") || gws[1] != netip.MustParsePrefix("fd00:10:244:1::1/64") {
		t.Fatalf("gateway prefixes = %v", gws)
	}
	res := BuildResult(w, Iface{Name: "svc0", Mac: "02:00:00:00:00:01"}, Iface{Name: "svcabc", Mac: "02:00:00:00:00:02"},
		Iface{Name: "eth0", Mac: "02:00:00:00:00:03", Sandbox: "/var/run/netns/p"})
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"cniVersion":"1.1.0","interfaces":[{"mac":"02:00:00:00:00:01","name":"svc0"},{"mac":"02:00:00:00:00:02","name":"svcabc"},` +
		`{"mac":"02:00:00:00:00:03","name":"eth0","sandbox":"/var/run/netns/p"}],` +
		`"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":2},{"address":"fd00:10:244:1::5/64","gateway":"fd00:10:244:1::1","interface":2}],` +
		`"routes":[{"dst":"0.0.0.0/0","gw":"10.244.1.1"},{"dst":"::/0","gw":"fd00:10:244:1::1"}]}`
	if string(b) != want {
		t.Fatalf("result\n got %s\nwant %s", b, want)
	}
	old, err := res.GetAsVersion("0.3.1")
	if err != nil {
		t.Fatalf("converting to 0.3.1: %v", err)
	}
	var buf bytes.Buffer
	if err := old.PrintTo(&buf); err != nil || !strings.Contains(buf.String(), `"version": "4"`) {
		t.Fatalf("0.3.1 result = %s (%v)", buf.String(), err)
	}
	if err := SameAddresses(res, w); err != nil {
		t.Fatalf("SameAddresses(own result) = %v", err)
	}
	w2, _ := ParseAllocation(&api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.6/24", Gateway: "10.244.1.1"}}})
	if err := SameAddresses(res, w2); err == nil || !strings.Contains(err.Error(), "10.244.1.6/24") {
		t.Fatalf("SameAddresses with a different allocation = %v, want an error naming 10.244.1.6/24", err)
	}

	bad := []struct {
		alloc api.PodAllocation
		want  string
	}{
		{api.PodAllocation{IPs: alloc.IPs}, "no bridge"},
		{api.PodAllocation{Bridge: "svc0"}, "no address"},
		{api.PodAllocation{Bridge: "svc0", MTU: -1, IPs: alloc.IPs}, "MTU"},
		{api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.5", Gateway: "10.244.1.1"}}}, `"10.244.1.5"`},
		{api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.5/24", Gateway: "10.244.2.1"}}}, "not in 10.244.1.0/24"},
		{api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.5/24", Gateway: "fd00::1"}}}, "not in"},
		{api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{{Address: "10.244.1.1/24", Gateway: "10.244.1.1"}}}, "is the gateway"},
		{api.PodAllocation{Bridge: "svc0", IPs: []api.PodIP{alloc.IPs[0], {Address: "10.244.1.6/24", Gateway: "10.244.1.1"}}}, "two addresses"},
	}
	for _, tc := range bad {
		if _, err := ParseAllocation(&tc.alloc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseAllocation(%+v) = %v, want an error containing %q", tc.alloc, err, tc.want)
		}
	}
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return te.Code
}

// The commands that only talk to the daemon (no kernel changes), against a real socket.
func TestDaemonOnlyCommands(t *testing.T) {
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/30"), Gateway: netip.MustParseAddr("10.244.1.1")}}}
	m := podservertest.NewMemIPAM(n)
	srv := podservertest.Start(t, m, n)
	stdin := func(extra string) []byte {
		return []byte(`{"cniVersion": "1.1.0", "name": "svcproxy", "type": "svcproxy-cni", "apiSocket": "` + srv.Socket + `"` + extra + `}`)
	}
	p := &Plugin{}

	if err := p.Status(&skel.CmdArgs{StdinData: stdin("")}); err != nil {
		t.Fatalf("STATUS with a free range: %v", err)
	}
	for _, id := range []string{"keep", "drop"} {
		if _, err := m.Allocate(t.Context(), podserver.Pod{Attachment: podserver.Attachment{ContainerID: id, IfName: "eth0"}}); err != nil && id == "keep" {
			t.Fatal(err)
		}
	}
	err := p.Status(&skel.CmdArgs{StdinData: stdin("")})
	if cniCode(t, err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "10.244.1.0/30") {
		t.Fatalf("STATUS with a full range: %v", err)
	}
	err = p.GC(&skel.CmdArgs{StdinData: stdin(`, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]`)})
	if err != nil || m.Addrs(podserver.Attachment{ContainerID: "keep", IfName: "eth0"}) == nil {
		t.Fatalf("GC: %v; allocations %v, want keep/eth0 kept", err, m.Pods())
	}
	err = p.GC(&skel.CmdArgs{StdinData: stdin(`, "cni.dev/valid-attachments": [{"containerID": "", "ifname": "eth0"}]`)})
	if cniCode(t, err) != api.CodeInvalidEnv {
		t.Fatalf("GC with an invalid attachment: %v, want code %d", err, api.CodeInvalidEnv)
	}
	if err := p.GC(&skel.CmdArgs{StdinData: stdin("")}); err != nil || len(m.Pods()) != 0 {
		t.Fatalf("GC without valid attachments: %v; left %v, want nothing", err, m.Pods())
	}

	down := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: "/nonexistent",
		StdinData: []byte(`{"cniVersion": "1.1.0", "name": "svcproxy", "apiSocket": "` + filepath.Join(t.TempDir(), "none.sock") + `"}`)}
	if err := p.Status(down); cniCode(t, err) != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS without daemon: %v", err)
	}
	if err := p.Add(down); cniCode(t, err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("ADD without daemon: %v, want code %d", err, types.ErrTryAgainLater)
	}
	if err := p.GC(down); cniCode(t, err) != types.ErrTryAgainLater {
		t.Fatalf("GC without daemon: %v, want code %d", err, types.ErrTryAgainLater)
	}
	if err := p.Check(down); cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("CHECK without prevResult: %v, want code %d", err, types.ErrInvalidNetworkConfig)
	}
}

func TestPodMACFromIP(t *testing.T) {
	w := &Wiring{IPs: []IPConfig{{Address: netip.MustParsePrefix("fd00::1:2/64")}, {Address: netip.MustParsePrefix("10.244.1.5/24")}}}
	if got := w.PodMAC().String(); got != "0a:58:0a:f4:01:05" {
		t.Errorf("MAC from the IPv4 address: %s", got)
	}
	w6 := &Wiring{IPs: []IPConfig{{Address: netip.MustParsePrefix("fd00::a:b:c:d/64")}}}
	if got := w6.PodMAC().String(); got != "0a:58:00:0c:00:0d" {
		t.Errorf("MAC from the IPv6 address: %s", got)
	}
}
