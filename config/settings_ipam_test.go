package config

import (
	"errors"
	"testing"
	"time"
)

func TestIPAMAndEBPFSettings(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
ipam: {podCooldown: 0s, serviceGracePeriod: 1m, podGCGracePeriod: 5s}
ebpf: {cgroupPath: /sys/fs/cgroup/test, pinPath: /sys/fs/bpf/t1, interfaces: [eth0, eth1]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PodCooldown != 0 || cfg.ServiceGracePeriod != time.Minute || cfg.PodGCGracePeriod != 5*time.Second {
		t.Errorf("ipam: %v %v %v", cfg.PodCooldown, cfg.ServiceGracePeriod, cfg.PodGCGracePeriod)
	}
	if cfg.EBPFCgroupPath != "/sys/fs/cgroup/test" || cfg.EBPFPinPath != "/sys/fs/bpf/t1" || len(cfg.EBPFInterfaces) != 2 {
		t.Errorf("ebpf: %q %q %v", cfg.EBPFCgroupPath, cfg.EBPFPinPath, cfg.EBPFInterfaces)
	}
	def, err := Parse("d.yaml", []byte("apiVersion: svcproxy.io/v1alpha1\nkind: ProxyConfig\n"))
	if err != nil {
		t.Fatal(err)
	}
	if def.PodCooldown != DefaultPodCooldown || def.ServiceGracePeriod != DefaultServiceGracePeriod ||
		def.PodGCGracePeriod != DefaultPodGCGracePeriod || def.EBPFPinPath != DefaultEBPFPinPath {
		t.Errorf("defaults: %+v", def)
	}
	_, err = Parse("b.yaml", []byte(`apiVersion: svcproxy.io/v1alpha1
kind: ProxyConfig
ipam: {podCooldown: soon, grace: 1m}
ebpf: {cgroupPath: relative/dir, interfaces: [eth0, eth0, "has space"]}
`))
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("want *Error, got %v", err)
	}
	want := map[string]bool{"ipam.podCooldown": true, "ipam.grace": true, "ebpf.cgroupPath": true,
		"ebpf.interfaces[1]": true, "ebpf.interfaces[2]": true}
	for _, p := range perr.Problems {
		if !want[p.Field] {
			t.Errorf("unexpected problem %s", p)
		}
		if p.Line < 3 || p.Line > 4 {
			t.Errorf("problem on the wrong line: %s", p)
		}
		delete(want, p.Field)
	}
	for f := range want {
		t.Errorf("no problem reported for %s", f)
	}
}
