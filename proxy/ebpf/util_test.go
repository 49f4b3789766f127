package ebpf

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// requireRoot skips without root, except under CI where missing root is a failure.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CI is set, so it may not skip)")
	}
	t.Skip("needs root")
}

func randName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// privateBPFFS mounts a bpffs instance of this test's own (never /sys/fs/bpf, which the whole
// machine shares) and returns a pin path inside it. The mount goes away with the test.
func privateBPFFS(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "svcproxy")
}

func newTestBackend(t *testing.T, opts Options) *Backend {
	t.Helper()
	requireRoot(t)
	b, err := newTestBackendIn(t, "", opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b
}

// newTestBackendIn creates a Backend on a thread inside network namespace ns ("" = the
// test's own), with a private bpffs unless opts names a pin path, and cleans it up at the end.
func newTestBackendIn(t *testing.T, ns string, opts Options) (*Backend, error) {
	t.Helper()
	if opts.PinPath == "" {
		opts.PinPath = privateBPFFS(t)
	}
	if opts.NodeAddresses == nil {
		opts.NodeAddresses = []netip.Addr{netip.MustParseAddr("172.31.0.1")}
	}
	opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.withTestProgram = true
	var b *Backend
	var err error
	if ns == "" {
		b, err = New(opts)
	} else {
		inNetns(t, ns, func() { b, err = New(opts) })
	}
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := b.Cleanup(context.Background()); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	return b, nil
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

func mustSync(t *testing.T, b *Backend, prev, st *model.State) {
	t.Helper()
	if _, err := b.Sync(context.Background(), st, model.Diff(prev, st), prev == nil); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

// packet builds an Ethernet + IPv4 + TCP/UDP packet with valid checksums.
func packet(proto uint8, src, dst netip.AddrPort, payload []byte) []byte {
	l4len := 20
	if proto == protoUDP {
		l4len = 8
	}
	b := make([]byte, 14+20+l4len+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+l4len+len(payload)))
	ip[8] = 64
	ip[9] = proto
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s4[:])
	copy(ip[16:], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	l4 := b[34:]
	binary.BigEndian.PutUint16(l4[0:], src.Port())
	binary.BigEndian.PutUint16(l4[2:], dst.Port())
	copy(l4[l4len:], payload)
	if proto == protoTCP {
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
		binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudo(ip, len(l4))))
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		binary.BigEndian.PutUint16(l4[6:], checksum(l4, pseudo(ip, len(l4))))
	}
	return b
}

// tuple reads the addresses and ports of a packet built by packet and checks its checksums.
func tuple(t *testing.T, b []byte) (src, dst netip.AddrPort) {
	t.Helper()
	ip := b[14:34]
	if checksum(ip, 0) != 0 {
		t.Errorf("bad IPv4 header checksum")
	}
	l4 := b[34:]
	if ip[9] == protoTCP || binary.BigEndian.Uint16(l4[6:]) != 0 {
		if checksum(l4, pseudo(ip, len(l4))) != 0 {
			t.Errorf("bad L4 checksum")
		}
	}
	s := netip.AddrFrom4([4]byte(ip[12:16]))
	d := netip.AddrFrom4([4]byte(ip[16:20]))
	return netip.AddrPortFrom(s, binary.BigEndian.Uint16(l4[0:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(l4[2:]))
}

func pseudo(ip []byte, l4len int) uint32 {
	var sum uint32
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	return sum + uint32(ip[9]) + uint32(l4len)
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
