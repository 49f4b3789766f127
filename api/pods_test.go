package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/api/podserver/podservertest"
)

var testNet = podserver.Network{
	Bridge: "svc0",
	MTU:    1450,
	Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")}},
}

func start(t *testing.T, n podserver.Network) (*api.Client, *podservertest.MemIPAM, *podservertest.Server) {
	t.Helper()
	m := podservertest.NewMemIPAM(n)
	s := podservertest.Start(t, m, n)
	return api.NewClient(s.Socket), m, s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantAPIError(t *testing.T, err error, code int, contains string) {
	t.Helper()
	var e *api.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want *api.Error with code %d", err, err, code)
	}
	if e.Code != code || !strings.Contains(e.Message, contains) {
		t.Fatalf("error = %q code %d, want code %d and message containing %q", e.Message, e.Code, code, contains)
	}
	if got := api.ErrorCode(err); got != code {
		t.Fatalf("ErrorCode = %d, want %d", got, code)
	}
}

func TestSocketMode(t *testing.T) {
	_, _, s := start(t, testNet)
	fi, err := os.Stat(s.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode = %v, want socket 0600", fi.Mode())
	}
}

func TestAllocateIsIdempotentAndRecordsThePod(t *testing.T) {
	c, m, _ := start(t, testNet)
	req := &api.PodAllocateRequest{
		ContainerID: "c0ffee01", IfName: "eth0", PodNamespace: "default", PodName: "web-1",
		Labels: map[string]string{"app": "web", "app.kubernetes.io/tier": "front"}, Netns: "/var/run/netns/x",
	}
	first, err := c.AllocatePod(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if first.Bridge != "svc0" || first.MTU != 1450 || len(first.IPs) != 1 {
		t.Fatalf("allocation = %+v, want bridge svc0, mtu 1450, one IP", first)
	}
	ip := first.IPs[0]
	p, err := netip.ParsePrefix(ip.Address)
	if err != nil || p.Bits() != 24 || !testNet.Ranges[0].Prefix.Contains(p.Addr()) || p.Addr() == testNet.Ranges[0].Gateway {
		t.Fatalf("address = %q (%v), want a /24 in 10.244.1.0/24 other than the gateway", ip.Address, err)
	}
	if ip.Gateway != "10.244.1.1" {
		t.Fatalf("gateway = %q, want 10.244.1.1", ip.Gateway)
	}

	req.Labels = map[string]string{"app": "web2"}
	again, err := c.AllocatePod(ctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.IPs[0] != ip {
		t.Fatalf("second allocation = %+v, want the same %+v", again.IPs[0], ip)
	}
	other, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "c0ffee01", IfName: "net1"})
	if err != nil {
		t.Fatal(err)
	}
	if other.IPs[0].Address == ip.Address {
		t.Fatalf("another interface of the same container got the same address %s", ip.Address)
	}
	pod := m.Pods()[podserver.Attachment{ContainerID: "c0ffee01", IfName: "eth0"}]
	if pod.Namespace != "default" || pod.Name != "web-1" || pod.Labels["app"] != "web2" || pod.Netns != "/var/run/netns/x" {
		t.Fatalf("recorded pod = %+v, want default/web-1 with the latest labels and its netns", pod)
	}
}

func TestCheckReleaseGC(t *testing.T) {
	c, m, _ := start(t, testNet)
	var allocs []*api.PodAllocation
	for i := range 3 {
		a, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: fmt.Sprintf("ctr%d", i), IfName: "eth0", PodNamespace: "ns", PodName: fmt.Sprintf("p%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		allocs = append(allocs, a)
	}

	got, err := c.CheckPod(ctx(t), api.PodAttachment{ContainerID: "ctr1", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.IPs, allocs[1].IPs) || got.Bridge != "svc0" {
		t.Fatalf("check = %+v, want %+v", got, allocs[1])
	}
	_, err = c.CheckPod(ctx(t), api.PodAttachment{ContainerID: "nope", IfName: "eth0"})
	wantAPIError(t, err, api.CodeNoAllocation, "nope/eth0")

	if err := c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "ctr1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "ctr1", IfName: "eth0"}); err != nil {
		t.Fatalf("second release: %v, want success", err)
	}
	if err := c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "never-seen", IfName: "eth0"}); err != nil {
		t.Fatalf("release of unknown attachment: %v, want success", err)
	}
	_, err = c.CheckPod(ctx(t), api.PodAttachment{ContainerID: "ctr1", IfName: "eth0"})
	wantAPIError(t, err, api.CodeNoAllocation, "ctr1/eth0")

	res, err := c.GCPods(ctx(t), []api.PodAttachment{{ContainerID: "ctr2", IfName: "eth0"}, {ContainerID: "gone", IfName: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []api.PodReleased{{ContainerID: "ctr0", IfName: "eth0", PodNamespace: "ns", PodName: "p0", Addresses: []string{strings.TrimSuffix(allocs[0].IPs[0].Address, "/24")}}}
	if len(res.Released) != 1 || res.Released[0].ContainerID != want[0].ContainerID || !slices.Equal(res.Released[0].Addresses, want[0].Addresses) || res.Released[0].PodName != "p0" {
		t.Fatalf("gc released %+v, want %+v", res.Released, want)
	}
	if pods := m.Pods(); len(pods) != 1 {
		t.Fatalf("after gc %d allocations left (%v), want only ctr2", len(pods), pods)
	}
	res, err = c.GCPods(ctx(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Released) != 1 || res.Released[0].ContainerID != "ctr2" {
		t.Fatalf("gc with no valid attachment released %+v, want ctr2", res.Released)
	}
}

func TestFullRangeIsNotReady(t *testing.T) {
	// 10.244.1.0/29: .0 network, .1 gateway, .7 broadcast: 5 usable.
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{{Prefix: netip.MustParsePrefix("10.244.1.0/29"), Gateway: netip.MustParseAddr("10.244.1.1")}}}
	c, _, _ := start(t, n)
	st, err := c.PodStatus(ctx(t))
	if err != nil || !st.Ready || st.Reason != "" {
		t.Fatalf("status = %+v, %v; want ready", st, err)
	}
	for i := range 5 {
		if _, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"}); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	st, err = c.PodStatus(ctx(t))
	if err != nil || st.Ready || !strings.Contains(st.Reason, "10.244.1.0/29") {
		t.Fatalf("status = %+v, %v; want not ready naming the range", st, err)
	}
	_, err = c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "c5", IfName: "eth0"})
	wantAPIError(t, err, api.CodeNotAvailable, "10.244.1.0/29")
	// An existing attachment still gets its address.
	if _, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "c4", IfName: "eth0"}); err != nil {
		t.Fatalf("re-allocation of an existing attachment in a full range: %v", err)
	}
	if err := c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "c0", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if st, err = c.PodStatus(ctx(t)); err != nil || !st.Ready {
		t.Fatalf("status after a release = %+v, %v; want ready", st, err)
	}
}

func TestDualStack(t *testing.T) {
	n := podserver.Network{Bridge: "svc0", Ranges: []podserver.Range{
		{Prefix: netip.MustParsePrefix("10.244.1.0/24"), Gateway: netip.MustParseAddr("10.244.1.1")},
		{Prefix: netip.MustParsePrefix("fd00:10:244:1::/64"), Gateway: netip.MustParseAddr("fd00:10:244:1::1")},
	}}
	c, _, _ := start(t, n)
	a, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "ds", IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.IPs) != 2 || !strings.HasSuffix(a.IPs[0].Address, "/24") || !strings.HasPrefix(a.IPs[1].Address, "fd00:10:244:1::") ||
		!strings.HasSuffix(a.IPs[1].Address, "/64") || a.IPs[1].Gateway != "fd00:10:244:1::1" {
		t.Fatalf("dual-stack allocation = %+v, want a /24 IPv4 and a /64 IPv6 with their gateways", a.IPs)
	}
}

func TestBadRequestsNameTheField(t *testing.T) {
	c, m, s := start(t, testNet)
	cases := []struct {
		req   *api.PodAllocateRequest
		code  int
		field string
	}{
		{&api.PodAllocateRequest{IfName: "eth0"}, api.CodeInvalidEnv, "containerID"},
		{&api.PodAllocateRequest{ContainerID: "-bad", IfName: "eth0"}, api.CodeInvalidEnv, "containerID"},
		{&api.PodAllocateRequest{ContainerID: "ok"}, api.CodeInvalidEnv, "ifName"},
		{&api.PodAllocateRequest{ContainerID: "ok", IfName: "a-very-long-interface"}, api.CodeInvalidEnv, "ifName"},
		{&api.PodAllocateRequest{ContainerID: "ok", IfName: "eth0", PodNamespace: "Not_A_Namespace"}, api.CodeInvalidConfig, "podNamespace"},
		{&api.PodAllocateRequest{ContainerID: "ok", IfName: "eth0", PodName: "UPPER"}, api.CodeInvalidConfig, "podName"},
		{&api.PodAllocateRequest{ContainerID: "ok", IfName: "eth0", Labels: map[string]string{"bad key!": "x"}}, api.CodeInvalidConfig, "labels"},
		{&api.PodAllocateRequest{ContainerID: "ok", IfName: "eth0", Labels: map[string]string{"app": "has space"}}, api.CodeInvalidConfig, "labels[app]"},
	}
	for _, tc := range cases {
		_, err := c.AllocatePod(ctx(t), tc.req)
		wantAPIError(t, err, tc.code, "invalid "+tc.field)
	}
	err := c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "x"})
	wantAPIError(t, err, api.CodeInvalidEnv, "invalid ifName")
	_, err = c.GCPods(ctx(t), []api.PodAttachment{{ContainerID: "a", IfName: "eth0"}, {ContainerID: "", IfName: "eth0"}})
	wantAPIError(t, err, api.CodeInvalidEnv, "invalid validAttachments[1].containerID")
	if n := m.Calls("allocate") + m.Calls("release") + m.Calls("gc"); n != 0 {
		t.Fatalf("bad requests reached the IPAM %d times", n)
	}

	// Raw HTTP: broken JSON and wrong methods.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.Socket)
	}}}
	resp, err := hc.Post("http://svcproxy"+api.PathPodsAllocate, "application/json", strings.NewReader(`{"containerID": `))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), `"code": 6`) {
		t.Fatalf("broken JSON: %s %s, want 400 with code 6", resp.Status, body)
	}
	resp, err = hc.Get("http://svcproxy" + api.PathPodsAllocate)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET %s: %s, want 405", api.PathPodsAllocate, resp.Status)
	}
}

type failingIPAM struct{ podserver.PodIPAM }

func (failingIPAM) Allocate(context.Context, podserver.Pod) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("192.0.2.9")}, nil
}

func (failingIPAM) Release(context.Context, podserver.Attachment) error {
	return errors.New("disk on fire")
}

func TestIPAMFailures(t *testing.T) {
	s := podservertest.Start(t, failingIPAM{}, testNet)
	c := api.NewClient(s.Socket)
	_, err := c.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "a", IfName: "eth0"})
	wantAPIError(t, err, api.CodeIOFailure, "192.0.2.9 is in no pod range")
	err = c.ReleasePod(ctx(t), api.PodAttachment{ContainerID: "a", IfName: "eth0"})
	wantAPIError(t, err, api.CodeIOFailure, "disk on fire")

	s2 := podservertest.Start(t, podservertest.NewMemIPAM(testNet), podserver.Network{Bridge: "svc0"})
	c2 := api.NewClient(s2.Socket)
	st, err := c2.PodStatus(ctx(t))
	if err != nil || st.Ready || !strings.Contains(st.Reason, "podCIDR") {
		t.Fatalf("status without a range = %+v, %v; want not ready naming podCIDR", st, err)
	}
	_, err = c2.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "a", IfName: "eth0"})
	wantAPIError(t, err, api.CodeNotAvailable, "podCIDR")
}

func TestUnreachable(t *testing.T) {
	c, _, s := start(t, testNet)
	if _, err := c.PodStatus(ctx(t)); err != nil {
		t.Fatal(err)
	}
	s.Stop()
	_, err := c.PodStatus(ctx(t))
	if !errors.Is(err, api.ErrUnreachable) || api.ErrorCode(err) != api.CodeTryAgainLater {
		t.Fatalf("status of a stopped daemon: %v (code %d), want ErrUnreachable, code %d", err, api.ErrorCode(err), api.CodeTryAgainLater)
	}
	c2 := api.NewClient(filepath.Join(t.TempDir(), "none.sock"))
	if _, err := c2.AllocatePod(ctx(t), &api.PodAllocateRequest{ContainerID: "a", IfName: "eth0"}); !errors.Is(err, api.ErrUnreachable) {
		t.Fatalf("allocate without daemon: %v, want ErrUnreachable", err)
	}
}
