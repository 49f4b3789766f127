package main

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
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/api/podserver/podservertest"
)

// The root tests drive the plugin binary with the reference CNI client cnitool, run inside a
// node network namespace the test made (so the bridge and host veths live there), against a
// pod API server on a unix socket backed by podservertest.MemIPAM.

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CI is set, so it must not skip)")
	}
	t.Skip("this test needs root")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds svcproxy-cni and cnitool once per test run into a temp dir (the CNI_PATH).
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "svcproxy-cni-bin-")
		if buildErr != nil {
			return
		}
		for pkg, name := range map[string]string{
			"github.com/svcproxy/svcproxy/cmd/svcproxy-cni": "svcproxy-cni",
			"github.com/containernetworking/cni/cnitool":    "cnitool",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(ctx context.Context, env []string, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// netnsAdd makes a named network namespace with lo up; it is deleted at the end of the test.
func netnsAdd(t *testing.T, role string) string {
	t.Helper()
	name := "svcpt-cni-" + role + "-" + randHex(4)
	if _, err := run(tctx(t), nil, nil, "ip", "netns", "add", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = run(context.Background(), nil, nil, "ip", "netns", "del", name) })
	if _, err := run(tctx(t), nil, nil, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	return name
}

func nsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// cnitoolContainerID is the container ID cnitool derives from a netns path.
func cnitoolContainerID(path string) string {
	s := sha512.Sum512([]byte(path))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// env is one test's world: binaries, a conflist, a node netns and a pod API server.
type env struct {
	t       *testing.T
	bin     string
	confDir string
	netName string
	node    string
	network podserver.Network
	mem     *podservertest.MemIPAM
	srv     *podservertest.Server
}

func newEnv(t *testing.T, network podserver.Network) *env {
	t.Helper()
	requireRoot(t)
	e := &env{t: t, bin: binaries(t), confDir: t.TempDir(), netName: "svcpt-" + randHex(4), network: network}
	e.node = netnsAdd(t, "node")
	e.mem = podservertest.NewMemIPAM(network)
	e.srv = podservertest.Start(t, e.mem, network)
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q,
 "plugins": [{"type": "svcproxy-cni", "apiSocket": %q, "capabilities": {"labels": true}}]}`, e.netName, e.srv.Socket)
	if err := os.WriteFile(filepath.Join(e.confDir, "10-svcproxy.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// cnitool keeps results under libcni's default cache dir; drop this network's entries.
	t.Cleanup(func() {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", e.netName+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
	})
	return e
}

// cnitool runs `cnitool CMD NET NETNS` inside the node namespace, as a runtime would.
func (e *env) cnitool(cmd, podNetns, podName string, labels map[string]string) (string, error) {
	vars := []string{"CNI_PATH=" + e.bin, "NETCONFPATH=" + e.confDir}
	if podName != "" {
		vars = append(vars, "CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+podName)
	}
	if labels != nil {
		b, _ := json.Marshal(map[string]any{"labels": labels})
		vars = append(vars, "CAP_ARGS="+string(b))
	}
	return run(tctx(e.t), vars, nil, "ip", "netns", "exec", e.node, filepath.Join(e.bin, "cnitool"), cmd, e.netName, podNetns)
}

// plugin runs the plugin binary directly in the node namespace with a single-plugin config
// (plus extra keys), returning its stdout and the CNI error it printed, if any.
func (e *env) plugin(command string, extra map[string]any) (string, *types.Error) {
	conf := map[string]any{"cniVersion": "1.1.0", "name": e.netName, "type": "svcproxy-cni", "apiSocket": e.srv.Socket}
	for k, v := range extra {
		conf[k] = v
	}
	stdin, _ := json.Marshal(conf)
	out, err := run(tctx(e.t), []string{"CNI_COMMAND=" + command, "CNI_PATH=" + e.bin}, stdin,
		"ip", "netns", "exec", e.node, filepath.Join(e.bin, "svcproxy-cni"))
	if err == nil {
		return out, nil
	}
	te := &types.Error{}
	if jerr := json.Unmarshal([]byte(out), te); jerr != nil {
		e.t.Fatalf("plugin %s failed without a CNI error on stdout: %v", command, err)
	}
	return out, te
}

// add runs cnitool add and decodes its result.
func (e *env) add(podNS, podName string, labels map[string]string) *current.Result {
	e.t.Helper()
	out, err := e.cnitool("add", nsPath(podNS), podName, labels)
	if err != nil {
		e.t.Fatal(err)
	}
	res := &current.Result{}
	if err := json.Unmarshal([]byte(out), res); err != nil {
		e.t.Fatalf("decoding ADD result %q: %v", out, err)
	}
	return res
}

// inNS runs f in the named namespace.
func inNS(t *testing.T, name string, f func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(nsPath(name), func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// linkIn returns the link name in namespace nsName, or nil when there is none.
func linkIn(t *testing.T, nsName, link string) netlink.Link {
	t.Helper()
	var l netlink.Link
	inNS(t, nsName, func() error {
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

// ping sends ICMP echo requests from namespace nsName to dst until one is answered (at most
// 5 tries of 1 s each) and fails the test otherwise.
func ping(t *testing.T, nsName string, dst netip.Addr) {
	t.Helper()
	if err := tryPing(nsName, dst); err != nil {
		t.Fatalf("ping %s from %s: %v", dst, nsName, err)
	}
}

func tryPing(nsName string, dst netip.Addr) error {
	network, proto, typ := "ip4:icmp", 1, icmp.Type(ipv4.ICMPTypeEcho)
	if dst.Is6() {
		network, proto, typ = "ip6:ipv6-icmp", 58, ipv6.ICMPTypeEchoRequest
	}
	var conn *icmp.PacketConn
	err := ns.WithNetNSPath(nsPath(nsName), func(ns.NetNS) error {
		var err error
		conn, err = icmp.ListenPacket(network, "")
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
