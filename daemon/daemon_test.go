package daemon

import (
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/proxy/model"
)

func TestServicesStatusEndpointStates(t *testing.T) {
	ep := func(ip, node string, ready, serving, term bool) model.Endpoint {
		return model.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, NodeName: node, Ready: ready, Serving: serving, Terminating: term}
	}
	st := &model.State{NodeName: "n1", Services: []*model.Service{
		{Key: model.ServiceKey{Namespace: "default", Name: "web"}, Type: model.ClusterIP,
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{
				ep("10.244.1.2", "n1", true, true, false), ep("10.244.1.3", "n1", false, true, true), ep("10.244.1.4", "n1", false, false, false)}}}},
		{Key: model.ServiceKey{Namespace: "default", Name: "draining"}, Type: model.ClusterIP, AffinityTimeout: 1,
			Ports: []model.ServicePort{{Protocol: model.UDP, Port: 53, Endpoints: []model.Endpoint{ep("10.244.1.5", "n2", false, true, true)}}}},
		{Key: model.ServiceKey{Namespace: "default", Name: "local"}, Type: model.ClusterIP, InternalTrafficPolicyLocal: true,
			Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{ep("10.244.1.6", "n1", true, true, false), ep("10.244.2.6", "n2", true, true, false)}}}},
	}}
	got := servicesStatus(st)
	want := [][]string{{"active", "unused", "unused"}, {"draining"}, {"active", "active"}}
	for i, s := range got {
		for j, e := range s.Ports[0].Endpoints {
			if e.State != want[i][j] {
				t.Errorf("%s endpoint %s: state %q, want %q", s.Name, e.Address, e.State, want[i][j])
			}
		}
	}
	if got[1].SessionAffinity != "ClientIP" || got[0].ClusterIPs[0] != "10.96.0.10" {
		t.Errorf("service fields: %+v", got[:2])
	}
	if len(servicesStatus(nil)) != 0 {
		t.Error("nil state must give an empty list")
	}
}

func TestOverrides(t *testing.T) {
	cfg, err := config.Parse("c.yaml", []byte("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nnodeName: from-file\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := applyOverrides(cfg, Options{Mode: "fast"}); err == nil {
		t.Error("an unknown --mode must be refused")
	}
	t.Setenv("NODE_NAME", "from-env")
	if err := applyOverrides(cfg, Options{Mode: "ebpf", StateDir: "/s", APISocket: "/a.sock"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Mode != config.ModeEBPF || cfg.StateDir != "/s" || cfg.APISocket != "/a.sock" || cfg.NodeName != "from-file" {
		t.Errorf("overrides: %+v", cfg)
	}
	if err := applyOverrides(cfg, Options{NodeName: "flag"}); err != nil || cfg.NodeName != "flag" {
		t.Errorf("--node-name wins: %v %q", err, cfg.NodeName)
	}
	cfg.NodeName = ""
	if err := applyOverrides(cfg, Options{}); err != nil || cfg.NodeName != "from-env" {
		t.Errorf("NODE_NAME after config: %v %q", err, cfg.NodeName)
	}
}

func TestSettingsNeedRestart(t *testing.T) {
	parse := func(extra string) *config.Config {
		c, err := config.Parse("c.yaml", []byte("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nnodeName: n1\n"+extra))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	base := parse("")
	if settingsNeedRestart(base, parse("masqueradeAll: true\n")) {
		t.Error("masqueradeAll applies on reload")
	}
	if !settingsNeedRestart(base, parse("mode: iptables\n")) || !settingsNeedRestart(base, parse("bridge: br9\n")) {
		t.Error("mode and bridge need a restart")
	}
}

func TestHasIPv6(t *testing.T) {
	v4, err := config.Parse("a.yaml", []byte("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nserviceCIDR: 10.96.0.0/16\nclusterCIDR: 10.244.0.0/16\n"))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := config.Parse("b.yaml", []byte("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\nserviceCIDRs: [10.96.0.0/16, \"fd00:96::/112\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if hasIPv6(v4) || !hasIPv6(ds) {
		t.Errorf("hasIPv6: v4 %v, dual-stack %v", hasIPv6(v4), hasIPv6(ds))
	}
}
