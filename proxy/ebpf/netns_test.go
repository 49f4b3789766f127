package ebpf

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the client that runs inside the test's cgroup and network
// namespace: TestMain dispatches to helperMain when this variable is set.
const helperEnv = "SVCPROXY_EBPF_TEST_HELPER"

func TestMain(m *testing.M) {
	if cmd := os.Getenv(helperEnv); cmd != "" {
		os.Exit(helperMain(cmd))
	}
	os.Exit(m.Run())
}

// helperResult is what the helper prints, one JSON object per line.
type helperResult struct {
	Cgroup  string `json:"cgroup"`
	Remote  string `json:"remote,omitempty"`
	Data    string `json:"data,omitempty"`
	Err     string `json:"err,omitempty"`
	Refused bool   `json:"refused,omitempty"`
	Aborted bool   `json:"aborted,omitempty"`
	Stage   string `json:"stage,omitempty"`
}

func helperMain(cmd string) int {
	cg, _ := os.ReadFile("/proc/self/cgroup")
	enc := json.NewEncoder(os.Stdout)
	emit := func(r helperResult) {
		r.Cgroup = strings.TrimSpace(string(cg))
		_ = enc.Encode(r)
	}
	verb, target, _ := strings.Cut(cmd, " ")
	fail := func(stage string, err error) int {
		emit(helperResult{Stage: stage, Err: err.Error(), Refused: errors.Is(err, syscall.ECONNREFUSED), Aborted: errors.Is(err, syscall.ECONNABORTED)})
		return 0
	}
	switch verb {
	case "tcp":
		c, err := net.DialTimeout("tcp4", target, 5*time.Second)
		if err != nil {
			return fail("dial", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fail("read", err)
		}
		emit(helperResult{Remote: c.RemoteAddr().String(), Data: strings.TrimSpace(line)})
	case "udp":
		c, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			return fail("listen", err)
		}
		defer c.Close()
		dst, err := net.ResolveUDPAddr("udp4", target)
		if err != nil {
			return fail("resolve", err)
		}
		if _, err := c.WriteTo([]byte("ping"), dst); err != nil {
			return fail("send", err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fail("recv", err)
		}
		emit(helperResult{Remote: from.String(), Data: string(buf[:n])})
	case "udp-connected":
		c, err := net.Dial("udp4", target)
		if err != nil {
			return fail("dial", err)
		}
		defer c.Close()
		buf := make([]byte, 512)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return fail("send", err)
		}
		n, err := c.Read(buf)
		if err != nil {
			return fail("recv", err)
		}
		emit(helperResult{Stage: "ready", Remote: c.RemoteAddr().String(), Data: string(buf[:n])})
		// Wait for the test to remove the backend, then use the socket again.
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return fail("stdin", err)
		}
		// A destroyed socket reports ECONNABORTED to its next receive.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err = c.Read(buf); err != nil {
			return fail("recv-after", err)
		}
		emit(helperResult{Stage: "after", Data: string(buf[:n])})
	default:
		fmt.Fprintf(os.Stderr, "unknown helper command %q\n", cmd)
		return 2
	}
	return 0
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// netnsAdd creates a network namespace with lo up and deletes it when the test ends.
func netnsAdd(t *testing.T, prefix string) string {
	t.Helper()
	name := randName(prefix)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// inNetns runs f on a thread switched into network namespace ns.
func inNetns(t *testing.T, ns string, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- err // the thread stays locked and dies with the goroutine
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatalf("in netns %s: %v", ns, err)
	}
}

// testCgroup makes a child cgroup of the unified hierarchy, only for this test, and removes
// it at the end (after the helper processes in it have exited).
func testCgroup(t *testing.T) string {
	t.Helper()
	root := "/sys/fs/cgroup/unified"
	if ok, _ := isFS(root, unix.CGROUP2_SUPER_MAGIC); !ok {
		root = "/sys/fs/cgroup"
		if ok, _ := isFS(root, unix.CGROUP2_SUPER_MAGIC); !ok {
			t.Fatal("no cgroup v2 hierarchy mounted at /sys/fs/cgroup/unified or /sys/fs/cgroup")
		}
	}
	dir := filepath.Join(root, randName("svcproxy-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("cgroup %s could not be removed", dir)
	})
	return dir
}

// helper is a client process started inside cgroup cg and network namespace ns.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startHelper(t *testing.T, cg, ns, command string) *helper {
	t.Helper()
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The shell moves itself into the cgroup, then becomes the client inside the netns.
	script := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec ip netns exec %s %s", cg, ns, bin)
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), helperEnv+"="+command)
	cmd.Stderr = testWriter{t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill() // our own child, by PID
			<-done
		}
	})
	return h
}

func (h *helper) next(t *testing.T) helperResult {
	t.Helper()
	if !h.out.Scan() {
		t.Fatalf("helper ended without a result: %v", h.out.Err())
	}
	var r helperResult
	if err := json.Unmarshal(h.out.Bytes(), &r); err != nil {
		t.Fatalf("helper output %q: %v", h.out.Text(), err)
	}
	return r
}

// runHelper runs one client command to completion and returns its result, after checking that
// it really ran inside cg.
func runHelper(t *testing.T, cg, ns, command string) helperResult {
	t.Helper()
	r := startHelper(t, cg, ns, command).next(t)
	if !strings.Contains(r.Cgroup, filepath.Base(cg)) {
		t.Fatalf("helper ran in cgroup %q, not in %s", r.Cgroup, cg)
	}
	return r
}
