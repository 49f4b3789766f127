package ebpf

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	svcbpf "github.com/svcproxy/svcproxy/bpf"
)

// PortRange is an inclusive range of ports; the zero value means "not set".
type PortRange struct{ Min, Max uint16 }

// IsZero reports whether r is unset.
func (r PortRange) IsZero() bool { return r == PortRange{} }

// Size is the number of ports in r (0 when unset or reversed).
func (r PortRange) Size() int {
	if r.IsZero() || r.Max < r.Min {
		return 0
	}
	return int(r.Max) - int(r.Min) + 1
}

// Contains reports whether p lies in r.
func (r PortRange) Contains(p uint16) bool { return r.Size() > 0 && p >= r.Min && p <= r.Max }

func (r PortRange) overlaps(o PortRange) bool {
	return r.Size() > 0 && o.Size() > 0 && r.Min <= o.Max && o.Min <= r.Max
}

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

const (
	// localPortRangeFile is the range the node's sockets take ephemeral ports from. It is per
	// network namespace: read from the namespace New runs in (the node's).
	localPortRangeFile = "/proc/sys/net/ipv4/ip_local_port_range"
	// minSNATPorts is the fewest ports a SNAT range chosen automatically should have.
	minSNATPorts = 1024
)

// defaultLocalPortRange is Linux's default ip_local_port_range.
var defaultLocalPortRange = PortRange{Min: 32768, Max: 60999}

// fallbackSNATPorts is used when no range free of the node's ephemeral ports exists (the
// object's own default).
var fallbackSNATPorts = PortRange{Min: 61000, Max: 65535}

// readLocalPortRange reads net.ipv4.ip_local_port_range of the calling thread's network
// namespace.
func readLocalPortRange() (PortRange, error) {
	b, err := os.ReadFile(localPortRangeFile)
	if err != nil {
		return PortRange{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("%s: unexpected content %q", localPortRangeFile, b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || hi < lo {
		return PortRange{}, fmt.Errorf("%s: unexpected content %q", localPortRangeFile, b)
	}
	return PortRange{Min: uint16(lo), Max: uint16(hi)}, nil
}

// SNATPortsFor returns the source ports masqueraded flows of the tc path use, given the
// node's ip_local_port_range local and the service node port range nodePorts (zero when
// unknown), and a warning when no good range exists.
//
// The SNAT state lives in svc_ct only, which the kernel's port selection for the node's own
// sockets does not see: were a local socket to take a port a masqueraded flow to the same
// backend uses, the backend's replies to it would be taken for the flow's and sent to the
// outside client. So SNAT ports come from ports the kernel never gives out as ephemeral
// ports: those above the local range (61000-65535 with the default 32768 60999); when that
// leaves fewer than 1024, the largest run below the local range's start, above 1024 and
// outside nodePorts; when neither has 1024 ports, the larger of the two (the upper one when
// it has any) with a warning.
func SNATPortsFor(local, nodePorts PortRange) (PortRange, string) {
	var upper, lower PortRange
	if local.Max < 65535 {
		upper = PortRange{Min: local.Max + 1, Max: 65535}
	}
	if upper.Size() >= minSNATPorts {
		return upper, ""
	}
	if local.Min > 1025 {
		below := PortRange{Min: 1025, Max: local.Min - 1}
		lower = below
		if below.overlaps(nodePorts) {
			lower = PortRange{}
			if nodePorts.Min > below.Min {
				lower = PortRange{Min: below.Min, Max: nodePorts.Min - 1}
			}
			if nodePorts.Max < below.Max {
				if above := (PortRange{Min: nodePorts.Max + 1, Max: below.Max}); above.Size() > lower.Size() {
					lower = above
				}
			}
		}
	}
	if lower.Size() >= minSNATPorts {
		return lower, ""
	}
	r := upper
	if r.Size() == 0 {
		r = lower
	}
	if r.Size() == 0 {
		return fallbackSNATPorts, fmt.Sprintf("ip_local_port_range %s leaves no port for SNAT outside it: using %s, which local connections may also pick; their replies can then be taken for a masqueraded flow's (narrow net.ipv4.ip_local_port_range)", local, fallbackSNATPorts)
	}
	return r, fmt.Sprintf("ip_local_port_range %s leaves fewer than %d ports for SNAT outside it (and outside node ports %s): using %s, so at most %d masqueraded flows per backend and node address (narrow net.ipv4.ip_local_port_range)", local, minSNATPorts, nodePorts, r, r.Size())
}

// ctTimeouts are the conntrack timeouts of svc_ct entries (see svc.c); zero keeps the
// object's default. Tests shorten them.
type ctTimeouts struct {
	TCP, TCPClosing, UDP time.Duration
}

// chooseSNATPorts returns the SNAT range: Options.SNATPorts when set, else one derived from
// the calling network namespace's ip_local_port_range. The choice and problems are logged.
func (b *Backend) chooseSNATPorts() PortRange {
	local, err := readLocalPortRange()
	if err != nil {
		b.log.Warn("ebpf: cannot read the local port range, assuming the default", "default", defaultLocalPortRange.String(), "err", err)
		local = defaultLocalPortRange
	}
	r := b.opts.SNATPorts
	switch {
	case !r.IsZero() && r.Size() > 0:
		if r.Min == 0 {
			r.Min = 1 // port 0 means "no port found" to the program
		}
		if r.overlaps(local) {
			b.log.Warn("ebpf: SNATPorts overlaps the node's ip_local_port_range: replies to local connections may be taken for masqueraded flows", "SNATPorts", r.String(), "ip_local_port_range", local.String())
		}
	default:
		if !r.IsZero() {
			b.log.Warn("ebpf: SNATPorts is empty (Min above Max), choosing SNAT ports from the local port range", "SNATPorts", r.String())
		}
		var warn string
		r, warn = SNATPortsFor(local, b.opts.NodePortRange)
		if warn != "" {
			b.log.Warn("ebpf: " + warn)
		}
	}
	b.log.Info("ebpf: SNAT ports for masqueraded flows", "range", r.String(), "ip_local_port_range", local.String())
	return r
}

// setConstants writes the load-time settings of svc.c (its volatile const globals) into spec.
func setConstants(spec *ebpf.CollectionSpec, snat PortRange, ct *ctTimeouts) error {
	set := func(name string, v any) error {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("ebpf backend: the object has no variable %s", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("ebpf backend: set %s: %w", name, err)
		}
		return nil
	}
	if err := set(svcbpf.SvcVarSnatPortMin, snat.Min); err != nil {
		return err
	}
	if err := set(svcbpf.SvcVarSnatPortMax, snat.Max); err != nil {
		return err
	}
	if ct == nil {
		return nil
	}
	for _, t := range []struct {
		name string
		d    time.Duration
	}{
		{svcbpf.SvcVarCtTimeoutTcpNs, ct.TCP},
		{svcbpf.SvcVarCtTimeoutTcpClosingNs, ct.TCPClosing},
		{svcbpf.SvcVarCtTimeoutUdpNs, ct.UDP},
	} {
		if t.d > 0 {
			if err := set(t.name, uint64(t.d.Nanoseconds())); err != nil {
				return err
			}
		}
	}
	return nil
}
