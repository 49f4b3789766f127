package netns

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDualStackIPTables: with IPv6 service and pod ranges the iptables mode programs the IPv6
// VIPs through ip6tables beside the IPv4 ones (each family only its own addresses), and
// cleanup removes both. The harness's pods are IPv4 only, so this checks the kernel's rules,
// not IPv6 traffic.
func TestDualStackIPTables(t *testing.T) {
	bin, err := bins.svcproxy()
	if err != nil {
		t.Fatalf("svcproxy binary: %v", err)
	}
	s := newSandbox(t, Options{})
	ctx := context.Background()
	d := s.NewDaemon(DaemonOptions{Bin: bin, Mode: "iptables", NodeName: nodeName})
	cfg := `apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
nodeName: node1
mode: iptables
clusterCIDRs: [10.244.0.0/16, "fd00:244::/56"]
podCIDRs: [10.244.1.0/24, "fd00:244:0:1::/64"]
serviceCIDRs: [10.96.0.0/16, "fd00:96::/112"]
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
services:
  - name: web
    ipFamilyPolicy: RequireDualStack
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    ports: [{port: 80, targetPort: 8080}]
    endpoints: [{ip: 10.244.1.11}, {ip: "fd00:244:0:1::11"}]
`
	if err := d.WriteRaw([]byte(cfg)); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := d.WaitReady(ctx, readyTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.ModeReason, "dual-stack") {
		t.Errorf("mode reason should say dual-stack: %q", st.ModeReason)
	}
	save := func(cmd string) string {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", s.Node.Name, cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		return string(out)
	}
	v4, v6 := save("iptables-save"), save("ip6tables-save")
	for _, c := range []struct {
		what, text, want, not string
	}{
		{"iptables", v4, "--to-destination 10.244.1.11:8080", "fd00:"},
		{"ip6tables", v6, "--to-destination [fd00:244:0:1::11]:8080", "10.244.1.11"},
		{"ip6tables dispatch", v6, "-d fd00:96::10/128", ""},
	} {
		if !strings.Contains(c.text, c.want) {
			t.Errorf("%s lacks %q:\n%s", c.what, c.want, c.text)
		}
		if c.not != "" && strings.Contains(c.text, c.not) {
			t.Errorf("%s holds an address of the other family (%q):\n%s", c.what, c.not, c.text)
		}
	}
	if err := d.Stop(ctx, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := d.Cleanup(ctx); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		if out := save(cmd); strings.Contains(out, "SVCPROXY") {
			t.Errorf("%s after cleanup still holds our chains:\n%s", cmd, out)
		}
	}
}
