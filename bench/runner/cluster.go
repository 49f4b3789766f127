package runner

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svcproxy/svcproxy/bench/workload"
	"github.com/svcproxy/svcproxy/test/e2e/harness"
	"github.com/svcproxy/svcproxy/test/netns"
)

// clusterEnv is the run's control plane (etcd + kube-apiserver of test/e2e/harness in a
// namespace of its own) holding the workload as Services and EndpointSlices.
type clusterEnv struct {
	r        *Run
	c        *harness.Cluster
	have     int // services created so far
	nodeIP   netip.Addr
	attached int
	change   int // index of the change service in the current workload
}

// nodeUnderlayIP is the address a sandbox's node namespace gets on the control plane's
// underlay bridge (outside the range the harness hands to its own nodes).
var nodeUnderlayIP = netip.MustParseAddr("172.31.0.200")

func (r *Run) ensureCluster(ctx context.Context) error {
	if r.cluster != nil {
		return nil
	}
	env := &clusterEnv{r: r, nodeIP: nodeUnderlayIP}
	start := time.Now()
	if err := r.tb.Do(func() {
		env.c = harness.StartCluster(r.tb, harness.Options{KubeBinDir: r.opts.KubeBinDir})
	}); err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	r.log.Info("control plane ready", "took", time.Since(start).Round(time.Millisecond), "netns", env.c.ControlPlane.Name)
	cs := env.c.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: workload.Namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", workload.Namespace, err)
	}
	if _, err := env.c.RegisterNode(ctx, nodeName, env.nodeIP, "", netns.PodPrefix.String()); err != nil {
		return err
	}
	r.cluster = env
	return nil
}

func (e *clusterEnv) kubeconfig() (string, error) { return e.c.Kubeconfig, nil }

// ensureServices grows the API workload to n services (Services first, then their slices,
// from 16 workers). The probe and change services are always the last two: when the
// workload grows, the former ones get generated endpoints like every other service.
func (e *clusterEnv) ensureServices(ctx context.Context, n int) error {
	if n == e.have {
		return nil
	}
	if n < e.have {
		return fmt.Errorf("runner: the API workload can only grow (have %d services, case wants %d): order cases by size", e.have, n)
	}
	sp := spec(n)
	start := time.Now()
	cs := e.c.Client
	work := make(chan int)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if _, err := cs.CoreV1().Services(workload.Namespace).Create(ctx, sp.Service(i), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
					select {
					case errc <- fmt.Errorf("create service %s: %w", workload.Name(i), err):
					default:
					}
					continue
				}
				if _, err := cs.DiscoveryV1().EndpointSlices(workload.Namespace).Create(ctx, sp.EndpointSlice(i), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
					select {
					case errc <- fmt.Errorf("create slice %s: %w", workload.SliceName(i), err):
					default:
					}
				}
			}
		}()
	}
feed:
	for i := e.have; i < n; i++ {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// The former probe and change services become ordinary ones.
	for _, i := range []int{e.have - 1, e.have - 2} {
		if i < 0 {
			continue
		}
		if err := e.putSlice(ctx, sp, i); err != nil {
			return err
		}
	}
	e.r.log.Info("API workload ready", "services", n, "created", n-e.have, "took", time.Since(start).Round(time.Millisecond))
	e.have = n
	e.change = sp.ChangeIndex()
	return nil
}

func (e *clusterEnv) putSlice(ctx context.Context, sp workload.Spec, i int) error {
	cur, err := e.c.Client.DiscoveryV1().EndpointSlices(workload.Namespace).Get(ctx, workload.SliceName(i), metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get slice %s: %w", workload.SliceName(i), err)
	}
	want := sp.EndpointSlice(i)
	want.ResourceVersion = cur.ResourceVersion
	if _, err := e.c.Client.DiscoveryV1().EndpointSlices(workload.Namespace).Update(ctx, want, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update slice %s: %w", workload.SliceName(i), err)
	}
	return nil
}

// changeEndpoint points the change service's slice at ip and returns when the update was
// sent (the API server's answer is part of what is measured, as in a cluster).
func (e *clusterEnv) changeEndpoint(ctx context.Context, ip netip.Addr) (time.Time, error) {
	sp := spec(e.have).WithChange(ip)
	cur, err := e.c.Client.DiscoveryV1().EndpointSlices(workload.Namespace).Get(ctx, workload.SliceName(e.change), metav1.GetOptions{})
	if err != nil {
		return time.Time{}, err
	}
	want := sp.EndpointSlice(e.change)
	want.ResourceVersion = cur.ResourceVersion
	t0 := time.Now()
	_, err = e.c.Client.DiscoveryV1().EndpointSlices(workload.Namespace).Update(ctx, want, metav1.UpdateOptions{})
	return t0, err
}

// attach links a sandbox's node namespace to the control plane's underlay bridge (a veth
// made with both ends in the run's namespaces), so the daemon there reaches kube-apiserver.
func (e *clusterEnv) attach(ctx context.Context, sb *netns.Sandbox) error {
	e.attached++
	host := fmt.Sprintf("sb%d", e.attached)
	cp := e.c.ControlPlane.Name
	node := sb.Node.Name
	for _, args := range [][]string{
		{"-n", cp, "link", "add", host, "type", "veth", "peer", "name", "eth1", "netns", node},
		{"-n", cp, "link", "set", host, "master", harness.UnderlayBridge},
		{"-n", cp, "link", "set", host, "up"},
		{"-n", node, "addr", "add", netip.PrefixFrom(e.nodeIP, 24).String(), "dev", "eth1"},
		{"-n", node, "link", "set", "eth1", "up"},
	} {
		if out, err := runCmd(ctx, "ip", args...); err != nil {
			return fmt.Errorf("attach %s to the underlay: %w: %s", node, err, out)
		}
	}
	return nil
}

var _ = filepath.Join
