// Package daemon wires svcproxy together: a source of desired state (the config file, or the
// Kubernetes API), IPAM, the chosen backend and its sync loop, the health and metrics servers,
// and the local API on the unix socket. It holds no logic of its own beyond the wiring.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/api/podserver"
	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/ipam"
	"github.com/svcproxy/svcproxy/ipam/podadapter"
	"github.com/svcproxy/svcproxy/metrics"
	"github.com/svcproxy/svcproxy/proxy"
	"github.com/svcproxy/svcproxy/proxy/healthcheck"
	"github.com/svcproxy/svcproxy/proxy/healthserver"
	"github.com/svcproxy/svcproxy/proxy/model"
	"github.com/svcproxy/svcproxy/proxy/routes"
	"github.com/svcproxy/svcproxy/proxy/syncloop"
	"github.com/svcproxy/svcproxy/source/kube"
	"k8s.io/klog/v2"
)

// Options are the daemon's command-line settings; those left empty come from the config file.
type Options struct {
	ConfigPath string
	Kubeconfig string
	NodeName   string
	Mode       string
	StateDir   string
	APISocket  string
	Version    string
	Logger     *slog.Logger
}

// InputError marks a failure caused by bad input (config, flags): exit code 1.
type InputError struct{ Err error }

func (e *InputError) Error() string { return e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// Daemon is one running svcproxy.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	cfg     *config.Config // settings in force (from the first good load)
	cfgData []byte         // the bytes cfg was parsed from (the watcher's first read reuses cfg)
	metrics *metrics.Metrics
	backend proxy.Backend
	modeWhy string
	loop    *syncloop.Loop

	store *ipam.Store
	svcs  *ipam.ServiceAllocator // standalone mode only
	// pods is nil until this node's pod range is known: from the config at start, or in
	// cluster mode from the Node's spec.podCIDRs once the API source has synced.
	pods    atomic.Pointer[ipam.PodAllocator]
	kube    *kube.Source // cluster mode only
	checker *healthcheck.Checker
	routes  *routes.Manager
	hcnp    *healthserver.Server
	// podGC tracks since when cluster pod GC has seen each allocation's pod missing; made
	// once, by podGCTracker.
	podGC     *ipam.GCTracker
	podGCOnce sync.Once

	republish chan struct{}

	mu           sync.Mutex // guards the fields below
	configErr    string
	configLoaded time.Time
	lastCfg      *config.Config
}

// Run loads the config, starts everything and blocks until ctx ends (SIGTERM/SIGINT in the
// command). Rules stay programmed when it returns: only `svcproxy cleanup` removes them.
func Run(ctx context.Context, opts Options) error {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ConfigPath == "" && !clusterMode(opts) {
		return &InputError{errors.New("run needs --config FILE (standalone) or --kubeconfig FILE (cluster)")}
	}
	cfg, data, err := loadSettings(opts)
	if err != nil {
		return err
	}
	d := &Daemon{opts: opts, log: opts.Logger, cfg: cfg, cfgData: data, metrics: metrics.New(), republish: make(chan struct{}, 1)}
	return d.run(ctx)
}

func clusterMode(opts Options) bool {
	return opts.Kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
}

// LoadSettings loads the config file (when given) and applies the command-line overrides.
func LoadSettings(opts Options) (*config.Config, error) {
	cfg, _, err := loadSettings(opts)
	return cfg, err
}

// loadSettings is LoadSettings that also returns the bytes the config was parsed from.
func loadSettings(opts Options) (*config.Config, []byte, error) {
	data := []byte("apiVersion: " + config.APIVersion + "\nkind: " + config.Kind + "\n")
	name := "defaults"
	if opts.ConfigPath != "" {
		var err error
		if data, err = config.ReadFile(opts.ConfigPath); err != nil {
			return nil, nil, &InputError{fmt.Errorf("read config: %w", err)}
		}
		name = opts.ConfigPath
	}
	cfg, err := config.Parse(name, data)
	if err != nil {
		return nil, nil, &InputError{err}
	}
	if err := applyOverrides(cfg, opts); err != nil {
		return nil, nil, &InputError{err}
	}
	return cfg, data, nil
}

func applyOverrides(cfg *config.Config, opts Options) error {
	if opts.Mode != "" {
		switch m := config.Mode(opts.Mode); m {
		case config.ModeAuto, config.ModeIPTables, config.ModeEBPF:
			cfg.Mode = m
		default:
			return fmt.Errorf("--mode %q: must be auto, iptables or ebpf", opts.Mode)
		}
	}
	if opts.StateDir != "" {
		cfg.StateDir = opts.StateDir
	}
	if opts.APISocket != "" {
		cfg.APISocket = opts.APISocket
	}
	switch {
	case opts.NodeName != "":
		cfg.NodeName = opts.NodeName
	case cfg.NodeName != "":
	case os.Getenv("NODE_NAME") != "":
		cfg.NodeName = os.Getenv("NODE_NAME")
	default:
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: none given and hostname unknown: %w", err)
		}
		cfg.NodeName = h
	}
	return nil
}

func (d *Daemon) run(ctx context.Context) (err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	if err := os.MkdirAll(d.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	d.store, err = ipam.Open(filepath.Clean(d.cfg.StateDir), ipam.Options{Logger: d.log, PodCooldown: zeroMeansNone(d.cfg.PodCooldown), PodGCGrace: d.cfg.PodGCGracePeriod})
	if err != nil {
		return fmt.Errorf("opening IPAM state in %s: %w", d.cfg.StateDir, err)
	}
	defer d.store.Close()

	if clusterMode(d.opts) {
		// client-go logs through klog: send it to our structured log instead of raw stderr.
		klog.SetSlogLogger(d.log)
		client, err := kube.ClientFromFlags(d.opts.Kubeconfig)
		if err != nil {
			return &InputError{fmt.Errorf("kubernetes client: %w", err)}
		}
		d.kube = kube.New(client, kube.Options{
			NodeName: d.cfg.NodeName, ClusterCIDRs: d.cfg.ClusterCIDRs, ServiceCIDRs: d.cfg.ServiceCIDRs,
			NodePortAddresses: d.cfg.NodePortAddresses, MasqueradeAll: d.cfg.MasqueradeAll,
			PodCIDRs: d.cfg.PodCIDRsFor(d.cfg.NodeName), Logger: d.log,
			PodsChanged: func() { d.gcPods(ctx) },
		})
	} else {
		d.svcs, err = d.store.NewServiceAllocator(ipam.ServiceOptions{
			ServiceCIDRs: d.cfg.ServiceCIDRs, NodePortRange: ipam.PortRange(d.cfg.NodePortRange),
			GracePeriod: zeroMeansNone(d.cfg.ServiceGracePeriod)})
		if err != nil {
			return &InputError{fmt.Errorf("service allocator: %w", err)}
		}
	}
	if podCIDRs := d.cfg.PodCIDRsFor(d.cfg.NodeName); len(podCIDRs) > 0 {
		if err := d.ensurePodAllocator(podCIDRs); err != nil {
			return &InputError{err}
		}
	}

	backend, why, err := NewBackend(ctx, d.cfg, d.log)
	if err != nil {
		return err
	}
	d.backend, d.modeWhy = backend, why
	defer func() {
		if c, ok := backend.(io.Closer); ok {
			c.Close()
		}
	}()
	d.log.Info("backend chosen", "mode", backend.Name(), "why", why)
	d.loop = syncloop.New(backend, syncloop.Options{
		MinInterval: d.cfg.MinSyncPeriod, Period: d.cfg.SyncPeriod, Metrics: d.metrics, Logger: d.log,
	})
	d.checker = healthcheck.New(ctx, nil, d.requestRepublish, d.log)
	d.hcnp = healthserver.New(d.log, d.proxyLive)
	defer d.hcnp.Close()
	if d.routes, err = routes.New(); err != nil {
		return err
	}
	defer d.routes.Close()

	lis, err := api.Listen(d.cfg.APISocket)
	if err != nil {
		return err
	}
	defer os.Remove(d.cfg.APISocket)

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	serve := func(name string, l net.Listener, h http.Handler) {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s server: %w", name, err)
			}
		}()
		go func() {
			defer wg.Done()
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = srv.Shutdown(sctx)
		}()
	}
	serve("api", lis, d.apiHandler())
	for _, s := range []struct {
		name string
		addr netip.AddrPort
		h    http.Handler
	}{{"metrics", d.cfg.MetricsBindAddress, d.metricsHandler()}, {"healthz", d.cfg.HealthzBindAddress, d.healthHandler()}} {
		if !s.addr.IsValid() || s.addr.Port() == 0 {
			continue
		}
		l, err := net.Listen("tcp", s.addr.String())
		if err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("%s server on %s: %w", s.name, s.addr, err)
		}
		serve(s.name, l, s.h)
	}

	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	start("sync loop", d.loop.Run)
	start("publisher", d.runPublisher)
	if d.svcs != nil {
		start("service allocator", func(ctx context.Context) error { d.svcs.Run(ctx, 30*time.Second); return nil })
	}
	if d.kube != nil {
		start("kubernetes source", func(ctx context.Context) error {
			return d.kube.Run(ctx, func(*model.State) { d.requestRepublish() })
		})
		start("pod GC", d.runPodGC)
	} else {
		start("config watcher", d.runFileSource)
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		d.log.Error("stopping", "err", runErr)
	}
	cancel()
	wg.Wait()
	d.log.Info("stopped; programmed rules stay in place (svcproxy cleanup removes them)")
	return runErr
}

// podNetwork is what svcproxy-cni wires pods to.
func (d *Daemon) podNetwork() podserver.Network {
	n := podserver.Network{Bridge: d.cfg.Bridge, MTU: 1500}
	if pods := d.pods.Load(); pods != nil {
		n.Ranges = podadapter.New(pods).Ranges()
	}
	return n
}

// zeroMeansNone turns a config duration (0 = none) into ipam's convention (0 = default,
// negative = none).
func zeroMeansNone(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// ensurePodAllocator creates the pod allocator for podCIDRs unless one exists (a later change
// of the node's range needs a restart, as with a kubelet).
func (d *Daemon) ensurePodAllocator(podCIDRs []netip.Prefix) error {
	if cur := d.pods.Load(); cur != nil {
		if !samePrefixes(cur.Ranges(), podCIDRs) {
			d.log.Warn("this node's pod range changed; restart the daemon to use it", "now", cur.Ranges(), "new", podCIDRs)
		}
		return nil
	}
	a, err := d.store.NewPodAllocator(podCIDRs, d.cfg.NodeName)
	if err != nil {
		return fmt.Errorf("pod allocator for %v: %w", podCIDRs, err)
	}
	if d.pods.CompareAndSwap(nil, a) {
		d.log.Info("pod IPAM ready", "ranges", podCIDRs)
	}
	return nil
}

// PodNetwork implements podserver.NetInfo.
func (d *Daemon) PodNetwork() podserver.Network { return d.podNetwork() }
