package netns

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvModes lists the backends the scenarios run against, comma-separated.
const EnvModes = "SVCPROXY_TEST_MODES"

// Services every scenario's daemon starts with. Pods pod-a, pod-b and pod-c serve TCP 8080,
// UDP 5353 and HTTP 8081; "client" is a pod without a server.
var (
	webVIP    = netip.MustParseAddr("10.96.0.10")
	dnsVIP    = netip.MustParseAddr("10.96.0.53")
	emptyVIP  = netip.MustParseAddr("10.96.0.20")
	checkVIP  = netip.MustParseAddr("10.96.0.73")
	selfVIP   = netip.MustParseAddr("10.96.0.30")
	stickyVIP = netip.MustParseAddr("10.96.0.40")
	npVIP     = netip.MustParseAddr("10.96.0.50")
	localVIP  = netip.MustParseAddr("10.96.0.51")
	extVIP    = netip.MustParseAddr("10.96.0.60")
	// externalIP is outside every range the node owns; the external client routes it via the node.
	externalIP = netip.MustParseAddr("172.31.0.200")
	termVIP    = netip.MustParseAddr("10.96.0.70")
	itpVIP     = netip.MustParseAddr("10.96.0.71")
	lbVIP      = netip.MustParseAddr("10.96.0.72")
	// lbIP is the load-balancer IP, routed via the node by the external client.
	lbIP = netip.MustParseAddr("172.31.0.201")
)

const (
	nodeName      = "node1"
	webPort       = 80
	dnsPort       = 53
	npPort        = 30080
	localNodePort = 30081

	readyTimeout = 60 * time.Second
	// minSyncPeriod is svcproxy's default least time between two syncs.
	minSyncPeriod = time.Second
	reloadTimeout = 15 * time.Second
	// spreadConns connections over spreadPods pods, each pod must get at least
	// spreadMinShare of them.
	spreadConns    = 300
	spreadMinShare = 0.15
)

// Spread check, false-failure probability: with a uniform pick over 3 pods, the count of one
// pod in 300 connections is Binomial(300, 1/3) (mean 100, sd 8.2). Failing needs fewer than
// 45 (15%), 6.7 sd below the mean: P(X < 45) = 1.7e-13 exactly (sum of the binomial terms),
// so P(any of the 3 pods) <= 5.1e-13 by the union bound. A run of the whole table (a few such
// checks per mode) has a false-failure probability below 1e-11.

// env is one scenario's world: a sandbox with three serving pods, a client pod and the
// external client, and a running svcproxy in the node namespace.
type env struct {
	t      *testing.T
	ctx    context.Context
	mode   string
	s      *Sandbox
	d      *Daemon
	a      *Pod
	b      *Pod
	c      *Pod
	client *Pod
	// snapshots a scenario took (before hooks record the untouched node here).
	snapshots []Snapshot
	// extra services a scenario's before hook adds to the daemon's initial set.
	extra []Service
}

// services is the daemon's initial set.
func (e *env) services() []Service {
	all := ReadyEndpoints(nodeName, e.a, e.b, e.c)
	tcp := []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}}
	return append([]Service{
		{Name: "web", ClusterIP: webVIP.String(), Ports: tcp, Endpoints: all},
		{Name: "dns", ClusterIP: dnsVIP.String(), Ports: []ServicePort{{Name: "dns", Protocol: "UDP", Port: dnsPort, TargetPort: 5353}}, Endpoints: all},
		{Name: "empty", ClusterIP: emptyVIP.String(), Ports: []ServicePort{
			{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080},
			{Name: "dns", Protocol: "UDP", Port: dnsPort, TargetPort: 5353}}},
		{Name: "self", ClusterIP: selfVIP.String(), Ports: tcp, Endpoints: ReadyEndpoints(nodeName, e.a)},
		{Name: "sticky", ClusterIP: stickyVIP.String(), SessionAffinity: "ClientIP", SessionAffinityTimeoutSeconds: 600, Ports: tcp, Endpoints: all},
		{Name: "np", Type: "NodePort", ClusterIP: npVIP.String(), ExternalTrafficPolicy: "Cluster",
			Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080, NodePort: npPort}}, Endpoints: all},
		{Name: "np-local", Type: "NodePort", ClusterIP: localVIP.String(), ExternalTrafficPolicy: "Local",
			Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080, NodePort: localNodePort}}, Endpoints: all},
		{Name: "ext", ClusterIP: extVIP.String(), ExternalIPs: []string{externalIP.String()}, Ports: tcp, Endpoints: all},
	}, e.extra...)
}

// replaceService returns svcs with the service named like s replaced by s.
func replaceService(svcs []Service, s Service) []Service {
	out := append([]Service(nil), svcs...)
	for i := range out {
		if out[i].Name == s.Name {
			out[i] = s
		}
	}
	return out
}

func (e *env) config(services []Service) *ProxyConfig {
	cfg := BaseConfig(nodeName, e.mode)
	cfg.Services = services
	return cfg
}

// withWeb returns the initial services with web's endpoints replaced.
func (e *env) withWeb(pods ...*Pod) []Service {
	svcs := e.services()
	for i := range svcs {
		if svcs[i].Name == "web" {
			svcs[i].Endpoints = ReadyEndpoints(nodeName, pods...)
		}
	}
	return svcs
}

// probe runs spec from a namespace; unless spec says otherwise it gives up after 10 failed
// connections, so a broken data path fails a scenario quickly instead of after Count timeouts.
func (e *env) probe(from *Namespace, spec ProbeSpec) ProbeResult {
	e.t.Helper()
	if spec.MaxFailures == 0 {
		spec.MaxFailures = 10
	}
	res, err := e.s.Probe(e.ctx, from, spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

// requireSpread checks that every connection was answered and each of pods got at least
// spreadMinShare of them.
func (e *env) requireSpread(what string, res ProbeResult, pods ...*Pod) {
	e.t.Helper()
	if res.Failed() != 0 {
		e.t.Errorf("%s: %d of %d connections failed: %v", what, res.Failed(), res.Total(), res)
		return
	}
	min := int(spreadMinShare * float64(res.Total()))
	want := map[string]bool{}
	for _, p := range pods {
		want[p.PodName] = true
		if res.Replies[p.PodName] < min {
			e.t.Errorf("%s: %s answered %d of %d connections, want at least %d (%.0f%%): %v", what, p.PodName, res.Replies[p.PodName], res.Total(), min, 100*spreadMinShare, res)
		}
	}
	for name, n := range res.Replies {
		if !want[name] {
			e.t.Errorf("%s: %s answered %d connections but is not an endpoint: %v", what, name, n, res)
		}
	}
}

// requireAll checks that all n connections were answered by pods in the given set.
func (e *env) requireAll(what string, res ProbeResult, n int, pods ...*Pod) {
	e.t.Helper()
	ok := 0
	for _, p := range pods {
		ok += res.Replies[p.PodName]
	}
	if ok != n || res.Total() != n {
		e.t.Errorf("%s: want all %d connections answered by %v, got %v", what, n, podNames(pods), res)
	}
}

func podNames(pods []*Pod) []string {
	var n []string
	for _, p := range pods {
		n = append(n, p.PodName)
	}
	return n
}

func (e *env) web() netip.AddrPort { return netip.AddrPortFrom(webVIP, webPort) }

// scenario is one row of the table. before runs after the topology and servers are up and
// before the daemon starts (nil: nothing).
type scenario struct {
	name   string
	before func(e *env)
	run    func(e *env)
}

var scenarios = []scenario{
	{name: "spread from node", run: func(e *env) {
		res := e.probe(e.s.Node, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("node -> web VIP", res, e.a, e.b, e.c)
	}},
	{name: "spread from pod", run: func(e *env) {
		res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("client pod -> web VIP", res, e.a, e.b, e.c)
		// Traffic between pods is not masqueraded: the pods see the client's own address.
		if res.Peers[e.client.IP.String()] != res.OK() {
			e.t.Errorf("pods should see the client pod's address %s on every connection, saw %v", e.client.IP, res.Peers)
		}
	}},
	{name: "hairpin", run: func(e *env) {
		// "self" has pod-a as its only endpoint: pod-a reaches itself through the VIP.
		res := e.probe(&e.a.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(selfVIP, webPort), Count: 30})
		e.requireAll("pod-a -> self VIP -> pod-a", res, 30, e.a)
		// A per-packet data path must masquerade hairpin traffic or the reply bypasses the
		// un-DNAT and the connection fails; a socket-level one connects pod-a to its own
		// address. Either way, success above is what counts.
		e.t.Logf("hairpin peers seen by pod-a: %v", res.Peers)
	}},
	{name: "endpoint removed by reload", run: func(e *env) {
		res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("before reload", res, e.a, e.b, e.c)

		before, err := e.d.Status(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		// The daemon keeps a minimum interval (minSyncPeriod, 1 s) between syncs, so a change
		// right after a sync may wait for it. Measure the ordinary case, an edit to an idle
		// daemon: wait until the last sync is more than minSyncPeriod old.
		if before.LastSync.IsZero() {
			e.t.Fatalf("status shows no last sync: %+v", before)
		}
		time.Sleep(time.Until(before.LastSync.Add(minSyncPeriod + 100*time.Millisecond)))
		if err := e.d.WriteConfig(e.config(e.withWeb(e.a, e.b))); err != nil {
			e.t.Fatal(err)
		}
		written := time.Now()
		// pod-c must get no new connection once 1 s has passed since the write. Batches of
		// connections run until one has no pod-c; the wait for that is bounded by 1 s.
		deadline := written.Add(time.Second)
		for {
			r := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: 12, Parallel: 4})
			if r.Replies["pod-c"] == 0 && r.Failed() == 0 {
				e.t.Logf("pod-c stopped receiving connections %v after the config was written", time.Since(written).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("pod-c still receives new connections 1 s after it was removed from the config: last batch %v", r)
			}
		}
		if _, err := e.d.WaitApplied(e.ctx, before.DesiredGeneration, reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		if res.Replies["pod-c"] != 0 {
			e.t.Errorf("removed endpoint pod-c still answered %d connections after the reload was applied: %v", res.Replies["pod-c"], res)
		}
		e.requireSpread("after removing pod-c", res, e.a, e.b)

		// And back: pod-c is an endpoint again. This time the file is rewritten in place
		// (truncate, write), as `cat > FILE` does, instead of replaced by a rename.
		mid, err := e.d.Status(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		if err := e.d.WriteConfigInPlace(e.config(e.services())); err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.d.WaitApplied(e.ctx, mid.DesiredGeneration, reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("after adding pod-c back", res, e.a, e.b, e.c)
	}},
	{name: "active health check takes a failing endpoint out and back",
		before: func(e *env) {
			// The check port answers on pod-a and pod-b only: pod-c fails its check.
			for _, p := range []*Pod{e.a, e.b} {
				if _, err := e.s.StartServer(e.ctx, p, ServeSpec{TCP: []uint16{9999}}); err != nil {
					e.t.Fatal(err)
				}
			}
			e.extra = append(e.extra, Service{Name: "checked", ClusterIP: checkVIP.String(),
				Ports:     []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}},
				Endpoints: ReadyEndpoints(nodeName, e.a, e.b, e.c),
				HealthCheck: &HealthCheck{Type: "tcp", Port: 9999, IntervalSeconds: 1, TimeoutSeconds: 1,
					HealthyThreshold: 1, UnhealthyThreshold: 2}})
		},
		run: func(e *env) {
			vip := netip.AddrPortFrom(checkVIP, webPort)
			// Bounded wait: two failed checks one second apart, then a sync.
			waitFor := func(what string, ok func(ProbeResult) bool) {
				e.t.Helper()
				deadline := time.Now().Add(15 * time.Second)
				for {
					r := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: vip, Count: 30, Parallel: 4})
					if ok(r) {
						return
					}
					if time.Now().After(deadline) {
						e.t.Fatalf("%s: not seen within 15 s, last batch %v", what, r)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			waitFor("pod-c taken out after failing its check", func(r ProbeResult) bool { return r.Failed() == 0 && r.Replies["pod-c"] == 0 })
			res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: vip, Count: spreadConns})
			if res.Replies["pod-c"] != 0 {
				e.t.Errorf("pod-c fails its health check but answered %d connections: %v", res.Replies["pod-c"], res)
			}
			e.requireAll("checked VIP while pod-c fails its check", res, spreadConns, e.a, e.b)
			st, err := e.d.Status(e.ctx)
			if err != nil {
				e.t.Fatal(err)
			}
			for _, s := range st.Services {
				if s.Name != "checked" {
					continue
				}
				for _, ep := range s.Ports[0].Endpoints {
					if strings.HasPrefix(ep.Address, e.c.IP.String()+":") && (ep.Ready || ep.State == "active") {
						e.t.Errorf("status must show pod-c not ready while it fails its check: %+v", ep)
					}
				}
			}
			// pod-c passes again: it is taken back.
			if _, err := e.s.StartServer(e.ctx, e.c, ServeSpec{TCP: []uint16{9999}}); err != nil {
				e.t.Fatal(err)
			}
			waitFor("pod-c back after passing its check", func(r ProbeResult) bool { return r.Failed() == 0 && r.Replies["pod-c"] > 0 })
		}},
	{name: "no endpoints is refused at once", run: func(e *env) {
		// A timeout here would mean the packets are dropped instead of rejected. TCP is
		// answered by a RST. UDP is answered by ICMP port unreachable, which the kernel rate
		// limits per peer (a burst of 6, then 1 per icmp_ratelimit ms), so only 5 datagrams
		// per client. From the node itself a rejected UDP send fails at once with EPERM.
		for _, c := range []struct {
			from *Namespace
			spec ProbeSpec
		}{
			{&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(emptyVIP, webPort), Count: 10, Timeout: 3 * time.Second}},
			{e.s.Node, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(emptyVIP, webPort), Count: 10, Timeout: 3 * time.Second}},
			{&e.client.Namespace, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(emptyVIP, dnsPort), Count: 5, Parallel: 1, Timeout: 3 * time.Second}},
			{e.s.Node, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(emptyVIP, dnsPort), Count: 5, Parallel: 1, Timeout: 3 * time.Second}},
		} {
			res := e.probe(c.from, c.spec)
			if res.Refused+res.Rejected != c.spec.Count {
				e.t.Errorf("%s %s from %s (no endpoints): want all %d refused at once, got %v", c.spec.Proto, c.spec.Addr, c.from.Name, c.spec.Count, res)
			}
		}
	}},
	{name: "invalid reload keeps traffic", run: func(e *env) {
		good, err := e.d.Status(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		bad, err := e.config(e.withWeb(e.a)).Marshal()
		if err != nil {
			e.t.Fatal(err)
		}
		// Same config with pod-a only, but one VIP is not an IP: the whole file is invalid,
		// so web must keep all three endpoints.
		bad = []byte(strings.Replace(string(bad), selfVIP.String(), "10.96.0.300", 1))
		st, err := e.d.ReloadInvalid(e.ctx, bad, reloadTimeout)
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Logf("status shows config error: %s", st.ConfigError)
		if v, err := e.d.Metric(e.ctx, "svcproxy_config_reload_failures_total"); err != nil || v < 1 {
			e.t.Errorf("svcproxy_config_reload_failures_total = %v (%v), want >= 1 after an invalid reload", v, err)
		}
		if st.AppliedGeneration != good.AppliedGeneration {
			e.t.Errorf("applied generation moved from %d to %d on an invalid config", good.AppliedGeneration, st.AppliedGeneration)
		}
		res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("after invalid reload", res, e.a, e.b, e.c)

		// A valid file again clears the error and is applied.
		if _, err := e.d.Reload(e.ctx, e.config(e.withWeb(e.a)), reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: 30})
		e.requireAll("after fixing the config", res, 30, e.a)
	}},
	{name: "traffic survives SIGTERM and restart", run: func(e *env) { stopAndRestart(e, syscall.SIGTERM) }},
	{name: "traffic survives SIGKILL and restart", run: func(e *env) { stopAndRestart(e, syscall.SIGKILL) }},
	{name: "cleanup leaves the ruleset as found",
		before: func(e *env) {
			// Rules of someone else in the node: cleanup must leave them alone too.
			in := []string{"ip", "netns", "exec", e.s.Node.Name}
			if err := runAll(e.ctx,
				append(in, "iptables", "-w", "-t", "nat", "-N", "OTHER-NAT"),
				append(in, "iptables", "-w", "-t", "nat", "-A", "OTHER-NAT", "-d", "10.96.99.99/32", "-j", "RETURN"),
				append(in, "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-j", "OTHER-NAT"),
				append(in, "iptables", "-w", "-A", "FORWARD", "-s", "10.244.1.250/32", "-j", "ACCEPT"),
			); err != nil {
				e.t.Fatal(err)
			}
			snap, err := e.s.Snapshot(e.ctx, e.s.Node)
			if err != nil {
				e.t.Fatal(err)
			}
			e.snapshots = append(e.snapshots, snap)
		},
		run: func(e *env) {
			e.requireSpread("web before cleanup", e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns}), e.a, e.b, e.c)
			during, err := e.s.Snapshot(e.ctx, e.s.Node)
			if err != nil {
				e.t.Fatal(err)
			}
			if during.Diff(e.snapshots[0]) == "" {
				e.t.Fatalf("svcproxy changed nothing in the node namespace, yet the VIP works?")
			}
			if err := e.d.Stop(e.ctx, syscall.SIGTERM, 30*time.Second); err != nil {
				e.t.Fatalf("svcproxy exit after SIGTERM: %v", err)
			}
			out, err := e.d.Cleanup(e.ctx)
			e.t.Logf("svcproxy cleanup:\n%s", out)
			if err != nil {
				e.t.Fatal(err)
			}
			after, err := e.s.Snapshot(e.ctx, e.s.Node)
			if err != nil {
				e.t.Fatal(err)
			}
			if d := e.snapshots[0].Diff(after); d != "" {
				e.t.Errorf("node namespace after svcproxy cleanup differs from before svcproxy started (- before, + after):\n%s", d)
			}
			res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: 5, Timeout: time.Second})
			if res.OK() != 0 {
				e.t.Errorf("the VIP still answers after cleanup: %v", res)
			}
			// A second cleanup with nothing to remove succeeds.
			if out, err := e.d.Cleanup(e.ctx); err != nil {
				e.t.Errorf("second cleanup: %v\n%s", err, out)
			}
		}},
	{name: "status lists services and endpoints", run: func(e *env) {
		st, err := e.d.Status(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		found := map[string]bool{}
		for _, svc := range st.Services {
			found[svc.Name] = true
			switch svc.Name {
			case "web":
				if len(svc.ClusterIPs) != 1 || svc.ClusterIPs[0] != webVIP.String() || len(svc.Ports) != 1 {
					e.t.Errorf("status: web: want clusterIP %s and one port, got %+v", webVIP, svc)
					continue
				}
				active := map[string]bool{}
				for _, ep := range svc.Ports[0].Endpoints {
					if ep.State == "active" {
						active[ep.Address] = true
					}
				}
				for _, p := range []*Pod{e.a, e.b, e.c} {
					if !active[p.IP.String()] && !active[netip.AddrPortFrom(p.IP, 8080).String()] {
						e.t.Errorf("status: web: endpoint %s (%s) not shown as active: %+v", p.PodName, p.IP, svc.Ports[0].Endpoints)
					}
				}
			case "empty":
				for _, p := range svc.Ports {
					if len(p.Endpoints) != 0 {
						e.t.Errorf("status: empty: port %s has endpoints %+v", p.Name, p.Endpoints)
					}
				}
			case "np":
				if len(svc.Ports) != 1 || svc.Ports[0].NodePort != npPort {
					e.t.Errorf("status: np: want nodePort %d, got %+v", npPort, svc.Ports)
				}
			}
		}
		for _, want := range []string{"web", "dns", "empty", "self", "sticky", "np", "np-local", "ext"} {
			if !found[want] {
				e.t.Errorf("status does not list service %q", want)
			}
		}
		if !st.Healthy || st.Mode != e.mode || st.NodeName != nodeName {
			e.t.Errorf("status: want healthy, mode %s, node %s; got healthy=%v (%s) mode=%s node=%s", e.mode, nodeName, st.Healthy, st.HealthReason, st.Mode, st.NodeName)
		}
		if ok, err := e.d.Healthz(e.ctx, "/healthz"); err != nil || !ok {
			e.t.Errorf("/healthz: want 200, got ok=%v err=%v", ok, err)
		}
	}},
	{name: "allocated VIP stays across reload and restart", run: func(e *env) {
		// A service without clusterIP gets one from serviceCIDR, kept across reloads and
		// restarts (IPAM state in stateDir).
		svcs := append(e.services(), Service{Name: "auto", Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}},
			Endpoints: ReadyEndpoints(nodeName, e.a, e.b, e.c)})
		if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		vip := func() netip.Addr {
			st, err := e.d.Status(e.ctx)
			if err != nil {
				e.t.Fatal(err)
			}
			for _, s := range st.Services {
				if s.Name == "auto" && len(s.ClusterIPs) == 1 {
					a, err := netip.ParseAddr(s.ClusterIPs[0])
					if err != nil || !ServicePrefix.Contains(a) {
						e.t.Fatalf("allocated clusterIP %q is not in %s", s.ClusterIPs[0], ServicePrefix)
					}
					return a
				}
			}
			e.t.Fatalf("status does not show the allocated clusterIP of service auto: %+v", st.Services)
			return netip.Addr{}
		}
		first := vip()
		e.requireSpread("auto VIP "+first.String(), e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(first, webPort), Count: spreadConns}), e.a, e.b, e.c)
		// Reload with another service added before it in the file, then restart.
		svcs = append([]Service{{Name: "aaa", Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}}, Endpoints: ReadyEndpoints(nodeName, e.a)}}, svcs...)
		if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		if got := vip(); got != first {
			e.t.Errorf("allocated VIP changed on reload: %s -> %s", first, got)
		}
		if err := e.d.Stop(e.ctx, syscall.SIGKILL, 30*time.Second); err == nil {
			e.t.Log("svcproxy exited 0 on SIGKILL?")
		}
		if err := e.d.Start(e.ctx); err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.d.WaitReady(e.ctx, readyTimeout); err != nil {
			e.t.Fatal(err)
		}
		if got := vip(); got != first {
			e.t.Errorf("allocated VIP changed across a restart: %s -> %s", first, got)
		}
		e.requireSpread("auto VIP after restart", e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(first, webPort), Count: spreadConns}), e.a, e.b, e.c)
	}},
	{name: "terminating endpoints only as a fallback",
		before: func(e *env) {
			e.extra = []Service{termService(e, EndpointSpec{IP: e.a.IP.String(), NodeName: nodeName, Ready: true, Serving: true},
				EndpointSpec{IP: e.b.IP.String(), NodeName: nodeName, Serving: true, Terminating: true})}
		},
		run: func(e *env) {
			addr := netip.AddrPortFrom(termVIP, webPort)
			// A ready endpoint exists: the terminating one gets no new connection.
			res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: addr, Count: 100})
			e.requireAll("ready pod-a + terminating pod-b", res, 100, e.a)
			// Only the serving, terminating one is left: it is used rather than dropping traffic.
			svcs := replaceService(e.services(), termService(e, EndpointSpec{IP: e.b.IP.String(), NodeName: nodeName, Serving: true, Terminating: true}))
			if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
				e.t.Fatal(err)
			}
			res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: addr, Count: 100})
			e.requireAll("only terminating pod-b", res, 100, e.b)
			// Not serving either: no usable endpoint, so refused.
			svcs = replaceService(e.services(), termService(e, EndpointSpec{IP: e.b.IP.String(), NodeName: nodeName, Terminating: true}))
			if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
				e.t.Fatal(err)
			}
			res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: addr, Count: 10, Timeout: 3 * time.Second})
			if res.Refused != 10 {
				e.t.Errorf("terminating, not serving pod-b only: want all 10 refused, got %v", res)
			}
		}},
	{name: "internalTrafficPolicy Local uses node-local endpoints",
		before: func(e *env) {
			// pod-c is declared on another node: with internalTrafficPolicy Local, traffic from
			// this node must not go to it.
			e.extra = []Service{{Name: "itp", ClusterIP: itpVIP.String(), InternalTrafficPolicy: "Local",
				Ports:     []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}},
				Endpoints: append(ReadyEndpoints(nodeName, e.a, e.b), ReadyEndpoints("node2", e.c)...)}}
		},
		run: func(e *env) {
			res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(itpVIP, webPort), Count: spreadConns})
			e.requireSpread("client pod -> itp VIP (internalTrafficPolicy Local)", res, e.a, e.b)
		}},
	{name: "loadBalancerSourceRanges filter clients",
		before: func(e *env) {
			if err := e.s.RouteVia(e.ctx, netip.PrefixFrom(lbIP, 32)); err != nil {
				e.t.Fatal(err)
			}
			e.extra = []Service{lbService(e, ExternalClientIP.String()+"/32")}
		},
		run: func(e *env) {
			addr := netip.AddrPortFrom(lbIP, webPort)
			res := e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: addr, Count: spreadConns})
			e.requireSpread("external (allowed) -> load-balancer IP", res, e.a, e.b, e.c)
			// The client's address is no longer in the allowed ranges: it must not get through.
			svcs := replaceService(e.services(), lbService(e, "192.0.2.0/24"))
			if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
				e.t.Fatal(err)
			}
			res = e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: addr, Count: 5, Timeout: time.Second})
			if res.OK() != 0 {
				e.t.Errorf("external client outside loadBalancerSourceRanges reached the service: %v", res)
			}
		}},
	{name: "UDP through the VIP", run: func(e *env) {
		res := e.probe(&e.client.Namespace, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(dnsVIP, dnsPort), Count: spreadConns})
		e.requireSpread("client pod -> dns VIP (UDP)", res, e.a, e.b, e.c)
		res = e.probe(e.s.Node, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(dnsVIP, dnsPort), Count: spreadConns})
		e.requireSpread("node -> dns VIP (UDP)", res, e.a, e.b, e.c)
	}},
	{name: "UDP flow leaves a removed endpoint", run: func(e *env) {
		// Datagrams from one source port share a 5-tuple, so a conntrack-based data path sends
		// them all to the endpoint it picked first. When that endpoint is removed (its server
		// still runs, as a pod being deleted may), the flow must move: kube-proxy deletes the
		// stale UDP conntrack entries, else the flow keeps reaching the removed pod. (A
		// socket-level data path picks per socket, and the probe opens one per datagram, so
		// there the datagrams may spread; the check after the removal holds for both.)
		dns := netip.AddrPortFrom(dnsVIP, dnsPort)
		flow := ProbeSpec{Proto: UDP, Addr: dns, Count: 5, Parallel: 1, SourcePort: 40053}
		res := e.probe(&e.client.Namespace, flow)
		if res.Failed() != 0 {
			e.t.Fatalf("UDP flow before the removal: %v", res)
		}
		e.t.Logf("flow before the removal: %v", res)
		// Remove the endpoint that got the most of the flow.
		var removed *Pod
		var rest []*Pod
		for _, p := range []*Pod{e.a, e.b, e.c} {
			if removed == nil || res.Replies[p.PodName] > res.Replies[removed.PodName] {
				removed = p
			}
		}
		for _, p := range []*Pod{e.a, e.b, e.c} {
			if p != removed {
				rest = append(rest, p)
			}
		}
		svcs := e.services()
		for i := range svcs {
			if svcs[i].Name == "dns" {
				svcs[i].Endpoints = ReadyEndpoints(nodeName, rest...)
			}
		}
		if _, err := e.d.Reload(e.ctx, e.config(svcs), reloadTimeout); err != nil {
			e.t.Fatal(err)
		}
		res = e.probe(&e.client.Namespace, flow)
		e.requireAll(fmt.Sprintf("the same UDP flow after %s was removed", removed.PodName), res, flow.Count, rest...)
	}},
	{name: "NodePort from the external client", run: func(e *env) {
		res := e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(NodeUnderlayIP, npPort), Count: spreadConns})
		e.requireSpread("external -> node:30080", res, e.a, e.b, e.c)
		// externalTrafficPolicy Cluster: traffic from outside clusterCIDR is masqueraded.
		if n := res.Peers[ExternalClientIP.String()]; n != 0 {
			e.t.Errorf("externalTrafficPolicy Cluster: %d connections reached pods with the external client's address unmasqueraded: %v", n, res.Peers)
		}
		// The NodePort answers on every local address, the bridge's too, for pods.
		res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(Gateway, npPort), Count: 30})
		e.requireAll("client pod -> gateway:30080", res, 30, e.a, e.b, e.c)
	}},
	{name: "ClusterIP from outside the node", run: func(e *env) {
		// The external client routes the service range via the node (as routers in front of
		// kube-proxy nodes often do); kube-proxy serves such traffic and masquerades it, since
		// it comes from outside clusterCIDR.
		res := e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("external -> web ClusterIP", res, e.a, e.b, e.c)
		if n := res.Peers[ExternalClientIP.String()]; n != 0 {
			e.t.Errorf("%d connections from outside clusterCIDR reached pods unmasqueraded: %v", n, res.Peers)
		}
	}},
	{name: "sessionAffinity ClientIP pins a client", run: func(e *env) {
		// Without affinity, 100 connections land on one pod with probability 3*(1/3)^100.
		res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(stickyVIP, webPort), Count: 100})
		if res.Failed() != 0 || len(res.Replies) != 1 {
			e.t.Errorf("client pod -> sticky VIP: want all 100 connections on one pod, got %v", res)
		}
		// The same service without affinity spreads (so the check above means something).
		res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
		e.requireSpread("client pod -> web VIP", res, e.a, e.b, e.c)
	}},
	{name: "externalTrafficPolicy Local keeps the client IP", run: func(e *env) {
		res := e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(NodeUnderlayIP, localNodePort), Count: 60})
		e.requireAll("external -> node:30081 (Local)", res, 60, e.a, e.b, e.c)
		if res.Peers[ExternalClientIP.String()] != res.OK() {
			e.t.Errorf("externalTrafficPolicy Local: pods must see the client's address %s on every connection, saw %v", ExternalClientIP, res.Peers)
		}
	}},
	{name: "externalIP from the external client",
		before: func(e *env) {
			if err := e.s.RouteVia(e.ctx, netip.PrefixFrom(externalIP, 32)); err != nil {
				e.t.Fatal(err)
			}
		},
		run: func(e *env) {
			res := e.probe(e.s.External, ProbeSpec{Proto: TCP, Addr: netip.AddrPortFrom(externalIP, webPort), Count: spreadConns})
			e.requireSpread("external -> externalIP:80", res, e.a, e.b, e.c)
		}},
}

func termService(e *env, eps ...EndpointSpec) Service {
	return Service{Name: "term", ClusterIP: termVIP.String(),
		Ports: []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}}, Endpoints: eps}
}

func lbService(e *env, sourceRange string) Service {
	return Service{Name: "lb", Type: "LoadBalancer", ClusterIP: lbVIP.String(), LoadBalancerIPs: []string{lbIP.String()},
		LoadBalancerSourceRanges: []string{sourceRange},
		Ports:                    []ServicePort{{Name: "http", Protocol: "TCP", Port: webPort, TargetPort: 8080}},
		Endpoints:                ReadyEndpoints(nodeName, e.a, e.b, e.c)}
}

// stopAndRestart stops the daemon with sig, checks traffic still flows with no daemon, then
// starts it again while a prober runs, and checks that no connection failed meanwhile.
func stopAndRestart(e *env, sig syscall.Signal) {
	err := e.d.Stop(e.ctx, sig, 30*time.Second)
	if sig == syscall.SIGTERM && err != nil {
		e.t.Errorf("svcproxy should exit 0 on SIGTERM, got %v", err)
	}
	res := e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
	e.requireSpread(fmt.Sprintf("daemon stopped by %v", sig), res, e.a, e.b, e.c)
	res = e.probe(&e.client.Namespace, ProbeSpec{Proto: UDP, Addr: netip.AddrPortFrom(dnsVIP, dnsPort), Count: 30})
	e.requireAll(fmt.Sprintf("UDP, daemon stopped by %v", sig), res, 30, e.a, e.b, e.c)

	bg := startBackgroundProbe(e, &e.client.Namespace, e.web())
	if err := e.d.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.d.WaitReady(e.ctx, readyTimeout); err != nil {
		bg.stop()
		e.t.Fatal(err)
	}
	// A few more rounds after ready, then stop the prober.
	bg.waitRounds(3)
	total := bg.stop()
	e.t.Logf("connections during restart: %v", total)
	if total.Failed() != 0 || total.OK() == 0 {
		e.t.Errorf("connections failed while svcproxy restarted (rules flushed on start?): %v, sequence %v", total, total.Sequence)
	}
	res = e.probe(&e.client.Namespace, ProbeSpec{Proto: TCP, Addr: e.web(), Count: spreadConns})
	e.requireSpread("after restart", res, e.a, e.b, e.c)
}

// backgroundProbe runs small probe batches until stopped and adds up what they saw.
type backgroundProbe struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	total  ProbeResult
	rounds int
	err    error
}

func startBackgroundProbe(e *env, from *Namespace, addr netip.AddrPort) *backgroundProbe {
	ctx, cancel := context.WithCancel(e.ctx)
	bg := &backgroundProbe{cancel: cancel, done: make(chan struct{}),
		total: ProbeResult{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}}}
	go func() {
		defer close(bg.done)
		// Bounded: at most 2000 rounds (a few minutes), whatever happens.
		for i := 0; i < 2000 && ctx.Err() == nil; i++ {
			r, err := e.s.Probe(ctx, from, ProbeSpec{Proto: TCP, Addr: addr, Count: 10, Parallel: 2, Timeout: time.Second})
			if ctx.Err() != nil {
				return
			}
			bg.mu.Lock()
			if err != nil {
				bg.err = err
				bg.mu.Unlock()
				return
			}
			bg.total.add(r)
			bg.rounds++
			bg.mu.Unlock()
		}
	}()
	return bg
}

func (bg *backgroundProbe) waitRounds(n int) {
	bg.mu.Lock()
	target := bg.rounds + n
	bg.mu.Unlock()
	for i := 0; i < 600; i++ {
		bg.mu.Lock()
		r := bg.rounds
		bg.mu.Unlock()
		if r >= target {
			return
		}
		select {
		case <-bg.done:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (bg *backgroundProbe) stop() ProbeResult {
	bg.cancel()
	<-bg.done
	bg.mu.Lock()
	defer bg.mu.Unlock()
	if bg.err != nil {
		bg.total.Errors["probe: "+bg.err.Error()]++
	}
	return bg.total
}

func (r *ProbeResult) add(o ProbeResult) {
	for k, v := range o.Replies {
		r.Replies[k] += v
	}
	for k, v := range o.Peers {
		r.Peers[k] += v
	}
	for k, v := range o.Errors {
		r.Errors[k] += v
	}
	r.Refused += o.Refused
	r.Rejected += o.Rejected
	r.Unreachable += o.Unreachable
	r.Timeout += o.Timeout
	r.Skipped += o.Skipped
	r.Sequence = append(r.Sequence, o.Sequence...)
}

// modes returns the backends to test: $SVCPROXY_TEST_MODES, iptables by default.
func modes() []string {
	v := os.Getenv(EnvModes)
	if v == "" {
		return []string{"iptables"}
	}
	var m []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			m = append(m, s)
		}
	}
	return m
}

// TestScenarios runs every scenario against every backend mode, each in a sandbox of its own
// with its own svcproxy.
func TestScenarios(t *testing.T) {
	RequireRoot(t)
	for _, mode := range modes() {
		t.Run(mode, func(t *testing.T) {
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					e := setupEnv(t, mode)
					if sc.before != nil {
						sc.before(e)
					}
					e.startDaemon()
					sc.run(e)
				})
			}
		})
	}
}

func setupEnv(t *testing.T, mode string) *env {
	t.Helper()
	bin, err := bins.svcproxy()
	if err != nil {
		t.Fatalf("svcproxy binary: %v", err)
	}
	s := newSandbox(t, Options{
		Pods:     []PodSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "pod-c"}, {Name: "client"}},
		External: true,
		Cgroup:   true,
		BPFFS:    true,
	})
	e := &env{t: t, ctx: context.Background(), mode: mode, s: s,
		a: s.Pod("pod-a"), b: s.Pod("pod-b"), c: s.Pod("pod-c"), client: s.Pod("client")}
	for _, p := range []*Pod{e.a, e.b, e.c} {
		if _, err := s.StartServer(e.ctx, p, ServeSpec{TCP: []uint16{8080}, UDP: []uint16{5353}, HTTP: []uint16{8081}}); err != nil {
			t.Fatal(err)
		}
	}
	e.d = s.NewDaemon(DaemonOptions{Bin: bin, Mode: mode, NodeName: nodeName})
	return e
}

func (e *env) startDaemon() {
	e.t.Helper()
	if err := e.d.WriteConfig(e.config(e.services())); err != nil {
		e.t.Fatal(err)
	}
	if err := e.d.Start(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	st, err := e.d.WaitReady(e.ctx, readyTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	if st.Mode != e.mode {
		e.t.Fatalf("svcproxy runs mode %q (%s), the test asked for %q", st.Mode, st.ModeReason, e.mode)
	}
}
