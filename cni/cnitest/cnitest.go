// Package cnitest is the real-kernel harness for svcproxy-cni: it builds the plugin and the
// reference CNI client cnitool, makes network namespaces (a node and pods), writes a conflist
// and drives the plugin the way a container runtime does, with cnitool run inside the node
// namespace so the bridge and host veths live there. Any daemon serving the pod API on a unix
// socket works: a podservertest server in unit-level integration tests, the real daemon later.
//
// Everything it makes is removed by t.Cleanup. Tests using it need root; RequireRoot skips
// them when not root unless CI is set.
package cnitest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// RequireRoot skips the test when not root, or fails it when CI is set.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CI is set, so it must not skip)")
	}
	t.Skip("this test needs root")
}

// Build compiles svcproxy-cni and cnitool into dir (which becomes the CNI_PATH). Call it once
// from TestMain; it needs the go tool on PATH.
func Build(ctx context.Context, dir string) error {
	for _, b := range []struct{ pkg, name string }{
		{"github.com/svcproxy/svcproxy/cmd/svcproxy-cni", "svcproxy-cni"},
		{"github.com/containernetworking/cni/cnitool", "cnitool"},
	} {
		out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, b.name), b.pkg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return nil
}

// RandHex returns 2n random hex characters.
func RandHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs a command with extra environment variables and optional stdin; the error holds
// its stdout and stderr.
func Run(ctx context.Context, env []string, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// Ctx is a context for one step of a test (60 s at most).
func Ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// NetnsAdd makes a named network namespace ("svcpt-cni-ROLE-RANDOM") with lo up; it is
// deleted at the end of the test.
func NetnsAdd(t testing.TB, role string) string {
	t.Helper()
	name := "svcpt-cni-" + role + "-" + RandHex(4)
	if _, err := Run(Ctx(t), nil, nil, "ip", "netns", "add", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Run(context.Background(), nil, nil, "ip", "netns", "del", name) })
	if _, err := Run(Ctx(t), nil, nil, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	return name
}

// NsPath is the bind mount of a named namespace.
func NsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// CnitoolContainerID is the container ID cnitool derives from a netns path.
func CnitoolContainerID(path string) string {
	s := sha512.Sum512([]byte(path))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// Node is a node namespace with a CNI network svcproxy-cni serves from a daemon's socket.
type Node struct {
	t       testing.TB
	Bin     string // CNI_PATH: svcproxy-cni and cnitool
	ConfDir string // NETCONFPATH
	NetName string // the network's name, unique per test
	Name    string // the node namespace
	Socket  string // the daemon's API socket
}

// NewNode makes a node namespace and a conflist (cniVersion 1.1.0, labels capability) for
// the daemon at socket. cnitool's cache entries of the network are removed at the end.
func NewNode(t testing.TB, bin, socket string) *Node {
	t.Helper()
	RequireRoot(t)
	n := &Node{t: t, Bin: bin, ConfDir: t.TempDir(), NetName: "svcpt-" + RandHex(4), Socket: socket}
	n.Name = NetnsAdd(t, "node")
	n.WriteConflist("1.1.0")
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", n.NetName+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
	})
	return n
}

// WriteConflist (re)writes the node's conflist with the given spec version.
func (n *Node) WriteConflist(cniVersion string) {
	n.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion": %q, "name": %q,
 "plugins": [{"type": "svcproxy-cni", "apiSocket": %q, "capabilities": {"labels": true}}]}`, cniVersion, n.NetName, n.Socket)
	if err := os.WriteFile(filepath.Join(n.ConfDir, "10-svcproxy.conflist"), []byte(conf), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// Cnitool runs `cnitool CMD NET NETNS` inside the node namespace, as a runtime would, with
// CNI_ARGS naming pod default/podName (when given) and the labels as capability args.
func (n *Node) Cnitool(cmd, podNetns, podName string, labels map[string]string) (string, error) {
	vars := []string{"CNI_PATH=" + n.Bin, "NETCONFPATH=" + n.ConfDir}
	if podName != "" {
		vars = append(vars, "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+podName)
	}
	if labels != nil {
		b, _ := json.Marshal(map[string]any{"labels": labels})
		vars = append(vars, "CAP_ARGS="+string(b))
	}
	return Run(Ctx(n.t), vars, nil, "ip", "netns", "exec", n.Name, filepath.Join(n.Bin, "cnitool"), cmd, n.NetName, podNetns)
}

// Add runs cnitool add for a pod namespace and decodes the result; it fails the test on error.
func (n *Node) Add(podNS, podName string, labels map[string]string) *current.Result {
	n.t.Helper()
	out, err := n.Cnitool("add", NsPath(podNS), podName, labels)
	if err != nil {
		n.t.Fatal(err)
	}
	res := &current.Result{}
	if err := json.Unmarshal([]byte(out), res); err != nil {
		n.t.Fatalf("decoding ADD result %q: %v", out, err)
	}
	return res
}

// Plugin runs the plugin binary directly in the node namespace with a single-plugin config
// (plus extra keys) and no container: for GC and STATUS. It returns stdout and the CNI error
// the plugin printed, if any.
func (n *Node) Plugin(command string, extra map[string]any) (string, *types.Error) {
	n.t.Helper()
	conf := map[string]any{"cniVersion": "1.1.0", "name": n.NetName, "type": "svcproxy-cni", "apiSocket": n.Socket}
	for k, v := range extra {
		conf[k] = v
	}
	stdin, _ := json.Marshal(conf)
	out, err := Run(Ctx(n.t), []string{"CNI_COMMAND=" + command, "CNI_PATH=" + n.Bin}, stdin,
		"ip", "netns", "exec", n.Name, filepath.Join(n.Bin, "svcproxy-cni"))
	if err == nil {
		return out, nil
	}
	te := &types.Error{}
	if jerr := json.Unmarshal([]byte(out), te); jerr != nil {
		n.t.Fatalf("plugin %s failed without a CNI error on stdout: %v", command, err)
	}
	return out, te
}

// InNS runs f in the named namespace and fails the test on error.
func InNS(t testing.TB, name string, f func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(NsPath(name), func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// LinkIn returns the link in the named namespace, or nil when there is none.
func LinkIn(t testing.TB, nsName, link string) netlink.Link {
	t.Helper()
	var l netlink.Link
	InNS(t, nsName, func() error {
		var err error
		l, err = netlink.LinkByName(link)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			l, err = nil, nil
		}
		return err
	})
	return l
}

// Ping sends ICMP echo requests from the named namespace to dst until one is answered and
// fails the test otherwise.
func Ping(t testing.TB, nsName string, dst netip.Addr) {
	t.Helper()
	if err := TryPing(nsName, dst); err != nil {
		t.Fatalf("ping %s from %s: %v", dst, nsName, err)
	}
}

// TryPing sends up to 5 ICMP echo requests (1 s wait each) from the named namespace to dst
// and returns nil on the first matching reply.
func TryPing(nsName string, dst netip.Addr) error {
	network, proto, typ := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho)
	if dst.Is6() {
		network, proto, typ = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest
	}
	var conn *icmp.PacketConn
	err := ns.WithNetNSPath(NsPath(nsName), func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket(network, "") // the socket stays in this namespace
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	id := int(time.Now().UnixNano() & 0xffff)
	var last error
	for seq := 1; seq <= 5; seq++ {
		msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("svcproxy-cni")}}
		b, _ := msg.Marshal(nil)
		if _, err := conn.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
			last = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		for {
			buf := make([]byte, 1500)
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				last = err
				break
			}
			reply, err := icmp.ParseMessage(proto, buf[:n])
			if err != nil {
				continue
			}
			if echo, ok := reply.Body.(*icmp.Echo); ok && (reply.Type == ipv4.ICMPTypeEchoReply || reply.Type == ipv6.ICMPTypeEchoReply) &&
				echo.ID == id && echo.Seq == seq && from.String() == dst.String() {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply: %v", last)
}

// RunWithBinaries is a TestMain body: as root it builds svcproxy-cni and cnitool into a
// temporary directory (Build) and stores its path in *binDir, then runs the tests and removes
// the directory. It returns the exit code for os.Exit; a failed build exits 1 before any test.
func RunWithBinaries(m *testing.M, binDir *string) int {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "svcproxy-cni-bin-")
		if err == nil {
			err = Build(context.Background(), dir)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			return 1
		}
		*binDir = dir
		defer os.RemoveAll(dir)
	}
	return m.Run()
}
