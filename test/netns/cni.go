package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Package paths of the CNI programs the harness runs.
const (
	SvcproxyCNIPkg = "github.com/svcproxy/svcproxy/cmd/svcproxy-cni"
	CnitoolPkg     = "github.com/containernetworking/cni/cnitool"
)

// EnvCNIBinDir is a directory holding a prebuilt svcproxy-cni (bin/ after `make build`).
// When unset, the directory of $SVCPROXY_BIN is tried, then svcproxy-cni is built.
const EnvCNIBinDir = "SVCPROXY_CNI_BIN"

// BuildCNI fills dir (which becomes CNI_PATH) with the svcproxy-cni plugin and the reference
// client cnitool. cnitool is always built from the module's tool dependency; svcproxy-cni is
// copied from $SVCPROXY_CNI_BIN or from beside $SVCPROXY_BIN when there is one, else built.
func BuildCNI(ctx context.Context, dir string) error {
	if err := goBuild(ctx, CnitoolPkg, filepath.Join(dir, "cnitool")); err != nil {
		return err
	}
	if src := prebuiltCNI(); src != "" {
		data, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("netns: read prebuilt svcproxy-cni: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "svcproxy-cni"), data, 0o755); err != nil {
			return fmt.Errorf("netns: copy svcproxy-cni into %s: %w", dir, err)
		}
		return nil
	}
	return goBuild(ctx, SvcproxyCNIPkg, filepath.Join(dir, "svcproxy-cni"))
}

// prebuiltCNI returns the svcproxy-cni binary named by the environment, or "".
func prebuiltCNI() string {
	var cands []string
	if d := os.Getenv(EnvCNIBinDir); d != "" {
		cands = append(cands, filepath.Join(d, "svcproxy-cni"))
	}
	if p := os.Getenv(EnvSvcproxyBin); p != "" {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			cands = append(cands, filepath.Join(p, "svcproxy-cni"))
		} else {
			cands = append(cands, filepath.Join(filepath.Dir(p), "svcproxy-cni"))
		}
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return c
		}
	}
	return ""
}

// GoBuild builds pkg into out from the module root (for the reference CNI plugins).
func GoBuild(ctx context.Context, pkg, out string) error { return goBuild(ctx, pkg, out) }

func goBuild(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if root, err := moduleRoot(ctx); err == nil {
		cmd.Dir = root
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("netns: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// CNI is one CNI network of a sandbox's node: a conflist in a directory of its own and the
// plugin binaries, driven by cnitool run inside the node namespace, as a container runtime
// on the node would. Close removes cnitool's cached results of the network.
type CNI struct {
	// Bin is CNI_PATH: cnitool and the plugins.
	Bin string
	// ConfDir is NETCONFPATH, holding the one conflist.
	ConfDir string
	// NetName is the network's name, unique per CNI.
	NetName string
	// Launcher picks how cnitool enters the node namespace; IPNetnsExec when zero.
	Launcher Launcher

	s *Sandbox
}

// SvcproxyPlugin is the plugin entry of a conflist for svcproxy-cni talking to socket, asking
// the runtime for the pods' labels.
func SvcproxyPlugin(socket string) map[string]any {
	return map[string]any{"type": "svcproxy-cni", "apiSocket": socket, "capabilities": map[string]any{"labels": true}}
}

// NewCNI writes a conflist (spec cniVersion, a fresh unique name) holding plugins into a
// directory under the sandbox's Dir. Plugins and cnitool must be in bin.
func (s *Sandbox) NewCNI(bin, cniVersion string, plugins ...map[string]any) (*CNI, error) {
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("netns: random network name: %w", err)
	}
	c := &CNI{Bin: bin, ConfDir: filepath.Join(s.Dir, "cni-"+hex.EncodeToString(rnd[:])), NetName: NamePrefix + "net-" + hex.EncodeToString(rnd[:]), s: s}
	conf, err := json.MarshalIndent(map[string]any{"cniVersion": cniVersion, "name": c.NetName, "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("netns: render conflist: %w", err)
	}
	if err := os.MkdirAll(c.ConfDir, 0o700); err != nil {
		return nil, fmt.Errorf("netns: conflist dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-"+c.NetName+".conflist"), conf, 0o644); err != nil {
		return nil, fmt.Errorf("netns: write conflist: %w", err)
	}
	return c, nil
}

// Close removes cnitool's cached results of the network (/var/lib/cni/results/NET-*).
func (c *CNI) Close() error {
	files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", c.NetName+"-*"))
	var errs []error
	for _, f := range files {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ContainerID is the container ID cnitool derives from a pod namespace (from its path), so
// one namespace path is one container, also across a delete and re-create of the namespace.
func ContainerID(pod *Namespace) string {
	s := sha512.Sum512([]byte(pod.Path()))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// CNIArgs are the per-call inputs of a pod.
type CNIArgs struct {
	// PodNamespace and PodName go into CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME) when PodName
	// is set; PodNamespace defaults to "default".
	PodNamespace, PodName string
	// Labels go into CAP_ARGS as {"labels": {...}} (runtimeConfig.labels) when not nil.
	Labels map[string]string
}

// Cnitool runs `cnitool CMD NET PODNETNS` inside the node namespace and returns its stdout;
// the error holds stdout and stderr.
func (c *CNI) Cnitool(ctx context.Context, cmd string, pod *Namespace, args CNIArgs) (string, error) {
	env := []string{"CNI_PATH=" + c.Bin, "NETCONFPATH=" + c.ConfDir}
	if args.PodName != "" {
		ns := args.PodNamespace
		if ns == "" {
			ns = "default"
		}
		env = append(env, "CNI_ARGS=K8S_POD_NAMESPACE="+ns+";K8S_POD_NAME="+args.PodName)
	}
	if args.Labels != nil {
		b, err := json.Marshal(map[string]any{"labels": args.Labels})
		if err != nil {
			return "", err
		}
		env = append(env, "CAP_ARGS="+string(b))
	}
	out, _, err := c.inNode(ctx, env, nil, filepath.Join(c.Bin, "cnitool"), cmd, c.NetName, pod.Path())
	return out, err
}

// Add runs cnitool add for pod and decodes the result.
func (c *CNI) Add(ctx context.Context, pod *Namespace, args CNIArgs) (*current.Result, error) {
	out, err := c.Cnitool(ctx, "add", pod, args)
	if err != nil {
		return nil, err
	}
	res := &current.Result{}
	if err := json.Unmarshal([]byte(out), res); err != nil {
		return nil, fmt.Errorf("netns: decoding ADD result %q: %w", out, err)
	}
	return res, nil
}

// PodIPv4 returns the first IPv4 address of an ADD result.
func PodIPv4(res *current.Result) (netip.Addr, error) {
	for _, ip := range res.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("netns: ADD result has no IPv4 address: %+v", res.IPs)
}

// Plugin runs the plugin of type typ directly in the node namespace, with no container, as a
// runtime runs GC and STATUS: stdin is a single-plugin config (cniVersion 1.1.0, the network's
// name, plugin's keys plus extra). It returns stdout and, when the plugin failed, the CNI
// error it printed; err is for failures to run it or to read its answer.
func (c *CNI) Plugin(ctx context.Context, command string, plugin, extra map[string]any) (string, *types.Error, error) {
	conf := map[string]any{"cniVersion": "1.1.0", "name": c.NetName}
	for k, v := range plugin {
		conf[k] = v
	}
	for k, v := range extra {
		conf[k] = v
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return "", nil, err
	}
	typ, _ := conf["type"].(string)
	out, exited, err := c.inNode(ctx, []string{"CNI_COMMAND=" + command, "CNI_PATH=" + c.Bin}, stdin, filepath.Join(c.Bin, typ))
	if err == nil {
		return out, nil, nil
	}
	if !exited {
		return out, nil, err
	}
	te := &types.Error{}
	if jerr := json.Unmarshal([]byte(out), te); jerr != nil {
		return out, nil, fmt.Errorf("netns: plugin %s %s failed without a CNI error on stdout: %w", typ, command, err)
	}
	return out, te, nil
}

// inNode runs argv in the node namespace with extra environment and optional stdin. exited
// tells whether the command ran and exited non-zero (as opposed to not starting at all).
func (c *CNI) inNode(ctx context.Context, env []string, stdin []byte, argv ...string) (out string, exited bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch c.Launcher {
	case Nsenter:
		argv = append([]string{"nsenter", "--net=" + c.s.Node.Path(), "--"}, argv...)
	default:
		argv = append([]string{"ip", "netns", "exec", c.s.Node.Name}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		return stdout.String(), errors.As(err, &ee), fmt.Errorf("%s: %w\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err, stdout.String(), strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), false, nil
}

// AddNamespace makes an empty network namespace of the sandbox (lo up) named after role; it
// is deleted by Close.
func (s *Sandbox) AddNamespace(ctx context.Context, role string) (*Namespace, error) {
	return s.addNamespace(ctx, role)
}

// DeleteNamespace deletes one of the sandbox's namespaces now (killing what runs in it), as
// a container runtime does when a pod sandbox dies.
func (s *Sandbox) DeleteNamespace(ctx context.Context, ns *Namespace) error {
	return deleteNamespace(ctx, ns.Name)
}

// RecreateNamespace deletes ns and makes a fresh, empty namespace of the same name (lo up):
// the same path, so cnitool sees the same container.
func (s *Sandbox) RecreateNamespace(ctx context.Context, ns *Namespace) error {
	if err := stopping(); err != nil {
		return err
	}
	if err := deleteNamespace(ctx, ns.Name); err != nil {
		return err
	}
	if _, err := run(ctx, "ip", "netns", "add", ns.Name); err != nil {
		return fmt.Errorf("netns: re-create namespace: %w", err)
	}
	if _, err := run(ctx, "ip", "-n", ns.Name, "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("netns: %s: %w", ns.Name, err)
	}
	return nil
}
