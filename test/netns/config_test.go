package netns

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/config"
)

// TestConfigsValidate checks, without root, that the configs the scenarios and the demo give
// svcproxy pass its own validation (what `svcproxy check` runs), and that the invalid one the
// "invalid reload" scenario writes is rejected: otherwise a scenario would test the wrong thing.
func TestConfigsValidate(t *testing.T) {
	pods := []*Pod{
		{PodName: "pod-a", IP: netip.MustParseAddr("10.244.1.10")},
		{PodName: "pod-b", IP: netip.MustParseAddr("10.244.1.11")},
		{PodName: "pod-c", IP: netip.MustParseAddr("10.244.1.12")},
	}
	e := &env{mode: "iptables", a: pods[0], b: pods[1], c: pods[2]}
	good, err := e.config(e.services()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, data []byte) error {
		cfg, err := config.Parse(name, data)
		if err == nil {
			_, err = cfg.BuildState(cfg.NodeName, nil, config.NewMemAllocator())
		}
		return err
	}
	if err := check("scenario.yaml", good); err != nil {
		t.Errorf("the scenarios' config is invalid:\n%v\n%s", err, good)
	}
	e.extra = []Service{termService(e, EndpointSpec{IP: "10.244.1.11", NodeName: nodeName, Serving: true, Terminating: true}), lbService(e, "172.31.0.10/32")}
	extra, err := e.config(e.services()).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := check("scenario-extra.yaml", extra); err != nil {
		t.Errorf("the scenarios' extra services are invalid:\n%v\n%s", err, extra)
	}
	bad := []byte(strings.Replace(string(good), selfVIP.String(), "10.96.0.300", 1))
	if err := check("invalid.yaml", bad); err == nil {
		t.Errorf("the invalid-reload scenario's config passes validation")
	}
	root, err := ModuleRoot(context.Background())
	if err != nil {
		t.Skip("not in the module tree:", err)
	}
	demo, err := os.ReadFile(filepath.Join(root, "deploy", "examples", "demo.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := check("demo.yaml", demo); err != nil {
		t.Errorf("deploy/examples/demo.yaml is invalid: %v", err)
	}
}
