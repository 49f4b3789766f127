package bpf

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
)

// TestLayout checks that the committed object and the generated Go types agree on every map's
// key and value size, and that each program has the type and attach point the loader expects.
// It needs no root: it only parses the embedded ELF.
func TestLayout(t *testing.T) {
	spec, err := LoadSvc()
	if err != nil {
		t.Fatal(err)
	}
	maps := map[string][2]any{
		SvcMapSvcServices:     {SvcSvcKey{}, SvcSvcValue{}},
		SvcMapSvcBackends:     {uint32(0), SvcBackendValue{}},
		SvcMapSvcRevnat:       {uint16(0), SvcRevnatValue{}},
		SvcMapSvcSockRevnat:   {SvcSockRevnatKey{}, SvcSockRevnatValue{}},
		SvcMapSvcAffinity:     {SvcAffinityKey{}, SvcAffinityValue{}},
		SvcMapSvcCt:           {SvcCtKey{}, SvcCtValue{}},
		SvcMapSvcIfaddrs:      {uint32(0), uint32(0)},
		SvcMapSvcDestroy:      {SvcDestroyKey{}, uint8(0)},
		SvcMapSvcSrcRanges:    {SvcSrcRangeKey{}, uint8(0)},
		SvcMapSvcClusterCidrs: {SvcCidrKey{}, uint8(0)},
	}
	// Plus .rodata, which holds the load-time constants checked below.
	if _, ok := spec.Maps[".rodata"]; !ok || len(spec.Maps) != len(maps)+1 {
		t.Errorf("object has %d maps, test knows %d and .rodata", len(spec.Maps), len(maps))
	}
	vars := map[string]any{
		SvcVarSnatPortMin:           uint16(0),
		SvcVarSnatPortMax:           uint16(0),
		SvcVarCtTimeoutTcpNs:        uint64(0),
		SvcVarCtTimeoutTcpClosingNs: uint64(0),
		SvcVarCtTimeoutUdpNs:        uint64(0),
	}
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			t.Errorf("variable %s missing", name)
			continue
		}
		if !vs.Constant() || int(vs.Size()) != binary.Size(v) {
			t.Errorf("variable %s: constant %v, %d bytes; want a %d-byte constant", name, vs.Constant(), vs.Size(), binary.Size(v))
		}
	}
	for name, kv := range maps {
		m, ok := spec.Maps[name]
		if !ok {
			t.Errorf("map %s missing", name)
			continue
		}
		if k, v := binary.Size(kv[0]), binary.Size(kv[1]); uint32(k) != m.KeySize || uint32(v) != m.ValueSize {
			t.Errorf("map %s: object key/value %d/%d bytes, Go types %d/%d", name, m.KeySize, m.ValueSize, k, v)
		}
	}
	progs := map[string]struct {
		typ    ebpf.ProgramType
		attach ebpf.AttachType
	}{
		SvcProgSvcConnect4:     {ebpf.CGroupSockAddr, ebpf.AttachCGroupInet4Connect},
		SvcProgSvcSendmsg4:     {ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Sendmsg},
		SvcProgSvcRecvmsg4:     {ebpf.CGroupSockAddr, ebpf.AttachCGroupUDP4Recvmsg},
		SvcProgSvcGetpeername4: {ebpf.CGroupSockAddr, ebpf.AttachCgroupInet4GetPeername},
		SvcProgSvcTcIngress:    {ebpf.SchedCLS, ebpf.AttachNone},
		SvcProgSvcTcEgress:     {ebpf.SchedCLS, ebpf.AttachNone},
		SvcProgSvcTcPodIngress: {ebpf.SchedCLS, ebpf.AttachNone},
		SvcProgSvcDestroyUdp:   {ebpf.Tracing, ebpf.AttachTraceIter},
		SvcProgSvcTestSelect:   {ebpf.Syscall, ebpf.AttachNone},
	}
	if len(spec.Programs) != len(progs) {
		t.Errorf("object has %d programs, test knows %d", len(spec.Programs), len(progs))
	}
	for name, want := range progs {
		p, ok := spec.Programs[name]
		if !ok {
			t.Errorf("program %s missing", name)
			continue
		}
		if p.Type != want.typ || p.AttachType != want.attach {
			t.Errorf("program %s: %s/%s, want %s/%s", name, p.Type, p.AttachType, want.typ, want.attach)
		}
	}
}
