package iptables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/proxy/model"
)

// needRoot skips a test needing root, unless CI is set: then it fails.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("this test needs root (CI is set, so it may not skip)")
	}
	t.Skip("needs root")
}

// newNetns creates a network namespace with a unique name, a dummy underlay interface
// (one end of a veth pair, 172.31.0.2/24) and routes to the pod and service ranges, removed when the test ends.
func newNetns(t testing.TB) NetnsRunner {
	t.Helper()
	needRoot(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "svcpx-ipt-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	r := NetnsRunner{Name: name}
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1"},
		{"ip", "addr", "add", "172.31.0.2/24", "dev", "dummy0"},
		{"ip", "link", "set", "dummy0", "up"},
		{"ip", "link", "set", "dummy1", "up"},
		{"ip", "route", "add", "10.96.0.0/16", "dev", "dummy0"},
		{"ip", "route", "add", "10.244.0.0/16", "dev", "dummy0"},
	} {
		mustRun(t, r, c[0], c[1:]...)
	}
	return r
}

func mustRun(t testing.TB, r Runner, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := r.Run(ctx, name, args, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func mustRestore(t *testing.T, r Runner, bin string, input string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.Run(ctx, bin, []string{"--noflush"}, []byte(input)); err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// saveNormalised returns iptables-save output without comments and counters.
func saveNormalised(t *testing.T, r Runner, bin string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(mustRun(t, r, bin), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, strings.TrimSpace(counters.ReplaceAllString(l, "")))
	}
	return strings.Join(lines, "\n")
}

// ruleCounts counts the -A lines per SVCPROXY chain (prefixed by table) in save or restore text.
func ruleCounts(text string) map[string]int {
	m := map[string]int{}
	table := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(counters.ReplaceAllString(l, ""))
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"+ChainPrefix):
			m[table+"/"+strings.Fields(l[1:])[0]] += 0
		case strings.HasPrefix(l, "-A "+ChainPrefix):
			m[table+"/"+strings.Fields(l)[1]]++
		}
	}
	return m
}

func sameCounts(t *testing.T, what string, got, want map[string]int) {
	t.Helper()
	var diff []string
	for k, v := range want {
		if got[k] != v {
			diff = append(diff, k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diff = append(diff, k)
		}
	}
	sort.Strings(diff)
	if len(diff) > 0 {
		var d []string
		for _, k := range diff {
			_, present := got[k]
			d = append(d, k+" got "+strings.Repeat("+", got[k])+map[bool]string{true: "", false: " (absent)"}[present]+" want "+strings.Repeat("+", want[k]))
		}
		t.Fatalf("%s: kernel chains differ from the rendering:\n%s", what, strings.Join(d, "\n"))
	}
}

// foreign is someone else's ruleset that must survive everything we do.
const foreign = `*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.9.9/32 -p tcp -m tcp --dport 80 -j RETURN
-A PREROUTING -s 10.9.9.9/32 -j ACCEPT
-A PREROUTING -j KUBE-SERVICES
-A POSTROUTING -o dummy0 -s 10.88.0.0/16 -j MASQUERADE
COMMIT
*filter
:USER-CHAIN - [0:0]
-A USER-CHAIN -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -j USER-CHAIN
-A FORWARD -s 10.9.9.9/32 -j DROP
-A OUTPUT -d 10.9.9.8/32 -j DROP
COMMIT
`

func TestBackendInNetns(t *testing.T) {
	for _, flavour := range []string{"nft", "legacy"} {
		t.Run(flavour, func(t *testing.T) { testBackend(t, flavour, 0) })
	}
	// The nft flavour splits large writes; force it on the small fixture.
	t.Run("nft-chunked", func(t *testing.T) { testBackend(t, "nft", 6) })
}

func testBackend(t *testing.T, flavour string, chunk int) {
	r := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := New(ctx, Options{Backend: flavour, Runner: r, NFTChunkRules: chunk})
	if err != nil {
		t.Fatal(err)
	}
	ipt, save, restore := b.Binaries()
	mustRestore(t, r, restore, foreign)
	before := saveNormalised(t, r, save)
	nftBefore := ""
	if flavour == "nft" {
		nftBefore = mustRun(t, r, "nft", "list", "ruleset")
	}

	// Full sync.
	st := fixtureState()
	res, err := b.Sync(ctx, st, model.Diff(nil, st), true)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Full || res.ServicesWritten != len(st.Services) || res.Objects == 0 {
		t.Fatalf("full sync result %+v", res)
	}
	nat, filter := Render(st)
	sameCounts(t, "full sync", ruleCounts(mustRun(t, r, save)), ruleCounts(nat+filter))
	afterFull := saveNormalised(t, r, save)
	for _, jr := range JumpRules() {
		if _, err := r.Run(ctx, ipt, append([]string{"-t", jr.Table, "-C", jr.Chain}, jr.Args...), nil); err != nil {
			t.Fatalf("jump rule %v missing: %v", jr, err)
		}
	}
	if ok, err := b.Verify(ctx); err != nil || !ok {
		t.Fatalf("Verify after sync: %v %v", ok, err)
	}
	// Foreign rules are still there and ours went in front of them.
	if !strings.Contains(afterFull, "-A PREROUTING -s 10.9.9.9/32 -j ACCEPT") || !strings.Contains(afterFull, "-A USER-CHAIN -p tcp -m tcp --dport 22 -j ACCEPT") {
		t.Fatalf("foreign rules lost:\n%s", afterFull)
	}

	// Idempotent: another full sync and an empty partial sync change nothing, and do not
	// duplicate jump rules.
	if _, err := b.Sync(ctx, st, model.Changes{}, true); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Sync(ctx, st, model.Changes{}, false); err != nil {
		t.Fatal(err)
	}
	if got := saveNormalised(t, r, save); got != afterFull {
		t.Fatalf("re-sync changed the ruleset:\n%s\n--- was\n%s", got, afterFull)
	}

	// Traffic from the namespace (nat OUTPUT) to web and to topo: their chains count packets.
	for _, vip := range []string{"10.96.0.10", "10.96.0.70"} {
		// The SYN goes out unanswered; timeout ends the attempt.
		_, _ = r.Run(ctx, "timeout", []string{"0.5", "bash", "-c", "exec 3<>/dev/tcp/" + vip + "/80"}, nil)
	}
	web := st.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	topo := st.Service(model.ServiceKey{Namespace: "default", Name: "topo"})
	webChain, _, _, _ := ServiceChainNames(web, &web.Ports[0])
	topoChain, _, _, _ := ServiceChainNames(topo, &topo.Ports[0])
	if chainPackets(t, r, save, webChain) == 0 || chainPackets(t, r, save, topoChain) == 0 {
		t.Fatalf("no packet counted in %s or %s:\n%s", webChain, topoChain, mustRun(t, r, save, "-c", "-t", "nat"))
	}

	// Partial sync: web loses an endpoint, sticky goes, a service comes.
	next := cloneState(st)
	nw := next.Service(web.Key)
	nw.Ports[0].Endpoints = nw.Ports[0].Endpoints[:2]
	var kept []*model.Service
	for _, s := range next.Services {
		if s.Key.Name != "sticky" {
			kept = append(kept, s)
		}
	}
	next.Services = append(kept, &model.Service{Key: model.ServiceKey{Namespace: "default", Name: "added"}, Type: model.ClusterIP,
		ClusterIPs: addrs("10.96.1.1"), Ports: []model.ServicePort{{Protocol: model.TCP, Port: 80, Endpoints: []model.Endpoint{ep("10.244.1.99", 80, "node1")}}}})
	next.Sort()
	res, err = b.Sync(ctx, next, model.Diff(st, next), false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Full || res.ServicesWritten != 2 {
		t.Fatalf("partial sync result %+v", res)
	}
	nat, filter = Render(next)
	sameCounts(t, "partial sync", ruleCounts(mustRun(t, r, save)), ruleCounts(nat+filter))
	// The unchanged service's chain was not rewritten (its counters survive); the changed one was.
	if chainPackets(t, r, save, topoChain) == 0 {
		t.Fatalf("partial sync rewrote %s of an unchanged service", topoChain)
	}
	if n := chainPackets(t, r, save, webChain); n != 0 {
		t.Fatalf("partial sync did not rewrite %s of the changed service (%d packets)", webChain, n)
	}
	st = next

	// The kernel refuses a plan: a foreign rule jumps into a chain the next sync deletes. The
	// sync fails and the old rules stay.
	topoEP := EndpointChainName(topo, &topo.Ports[0], topo.Ports[0].Endpoints[0])
	mustRun(t, r, ipt, "-w", "5", "-t", "nat", "-A", "KUBE-SERVICES", "-j", topoEP)
	good := saveNormalised(t, r, save)
	bad := cloneState(st)
	var rest []*model.Service
	for _, s := range bad.Services {
		if s.Key != topo.Key {
			rest = append(rest, s)
		}
	}
	bad.Services = rest
	nw = bad.Service(web.Key)
	nw.Ports[0].Endpoints = nw.Ports[0].Endpoints[:1]
	// This one changes the filter table too (REJECT), which must be rolled back.
	bad.Service(model.ServiceKey{Namespace: "default", Name: "dns"}).Ports[1].Endpoints = nil
	if _, err := b.Sync(ctx, bad, model.Diff(st, bad), false); err == nil {
		t.Fatal("sync succeeded although the kernel must refuse deleting a referenced chain")
	} else {
		t.Logf("refused as expected: %v", err)
	}
	if got := saveNormalised(t, r, save); got != good {
		t.Fatalf("a refused sync changed the ruleset:\n%s\n--- was\n%s", got, good)
	}
	mustRun(t, r, ipt, "-w", "5", "-t", "nat", "-D", "KUBE-SERVICES", "-j", topoEP)
	// The backend now insists on a full sync, which succeeds.
	res, err = b.Sync(ctx, bad, model.Diff(st, bad), false)
	if err != nil || !res.Full {
		t.Fatalf("sync after a failure: full=%v err=%v", res.Full, err)
	}
	nat, filter = Render(bad)
	sameCounts(t, "full sync after failure", ruleCounts(mustRun(t, r, save)), ruleCounts(nat+filter))

	// Canary: someone flushes our chains away; Verify notices.
	mustRun(t, r, ipt, "-w", "5", "-t", "nat", "-X", ChainCanary)
	if ok, err := b.Verify(ctx); err != nil || ok {
		t.Fatalf("Verify after canary removal: %v %v", ok, err)
	}
	if _, err := b.Sync(ctx, bad, model.Changes{}, true); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Verify(ctx); err != nil || !ok {
		t.Fatalf("Verify after full resync: %v %v", ok, err)
	}

	// Cleanup restores the ruleset exactly, and may run twice.
	for range 2 {
		if err := b.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if got := saveNormalised(t, r, save); got != before {
			t.Fatalf("after Cleanup:\n%s\n--- before\n%s", got, before)
		}
		// iptables-nft made base chains (and the nat table) for our jump rules; they must go too.
		if flavour == "nft" {
			if got := mustRun(t, r, "nft", "list", "ruleset"); got != nftBefore {
				t.Fatalf("nft ruleset after Cleanup:\n%s\n--- before\n%s", got, nftBefore)
			}
		}
	}
	if ok, err := b.Verify(ctx); err != nil || ok {
		t.Fatalf("Verify after Cleanup: %v %v", ok, err)
	}
}

// chainPackets sums the packet counters of the rules of nat chain.
func chainPackets(t *testing.T, r Runner, save, chain string) int {
	t.Helper()
	return tablePackets(t, r, save, "nat", chain)
}

// tablePackets sums the packet counters of the rules of chain in table.
func tablePackets(t *testing.T, r Runner, save, table, chain string) int {
	t.Helper()
	n := 0
	for _, l := range strings.Split(mustRun(t, r, save, "-c", "-t", table), "\n") {
		if !strings.Contains(l, "-A "+chain+" ") || !strings.HasPrefix(l, "[") {
			continue
		}
		var p, by int
		if _, err := fmt.Sscanf(l, "[%d:%d]", &p, &by); err == nil {
			n += p
		}
	}
	return n
}

func TestAutoFlavourInNetns(t *testing.T) {
	r := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := mustRun(t, r, "iptables", "--version")
	def, other := "legacy", "nft"
	if strings.Contains(out, "nf_tables") {
		def, other = "nft", "legacy"
	}
	b, err := New(ctx, Options{Runner: r})
	if err != nil {
		t.Fatal(err)
	}
	if b.Flavour() != def {
		t.Fatalf("empty namespace: flavour %s, want %s (what iptables points to)", b.Flavour(), def)
	}
	// Only the other flavour holds rules: auto follows it.
	mustRestore(t, r, "iptables-"+other+"-restore", "*filter\n-A OUTPUT -d 10.9.9.8/32 -j DROP\nCOMMIT\n")
	t.Cleanup(func() {
		_, _ = r.Run(context.Background(), "iptables-"+other, []string{"-D", "OUTPUT", "-d", "10.9.9.8/32", "-j", "DROP"}, nil)
	})
	if b, err = New(ctx, Options{Runner: r}); err != nil {
		t.Fatal(err)
	}
	if b.Flavour() != other {
		t.Fatalf("rules only in %s: flavour %s", other, b.Flavour())
	}
	if _, err := New(ctx, Options{Runner: r, Backend: "bogus"}); err == nil {
		t.Fatal("Backend bogus accepted")
	}
	if _, err := New(ctx, Options{Runner: r, MasqMark: 0x3000}); err == nil {
		t.Fatal("a two-bit mark accepted")
	}
}

func TestStaleUDPConntrackInNetns(t *testing.T) {
	r := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := New(ctx, Options{Runner: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Cleanup(context.Background()); err != nil {
			t.Error(err)
		}
	})
	st := fixtureState()
	np := st.Service(model.ServiceKey{Namespace: "default", Name: "np-empty"})
	np.Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.60", 5000, "node2"), ep("10.244.2.61", 5000, "node2")}
	if _, err := b.Sync(ctx, st, model.Diff(nil, st), true); err != nil {
		t.Fatal(err)
	}
	insert := func(args ...string) {
		mustRun(t, r, "conntrack", append([]string{"-I", "--timeout", "100"}, args...)...)
	}
	// UDP flows to np-empty through the endpoint that will leave and the one that stays; a
	// TCP flow to a web endpoint that will leave; a UDP flow to dns, which has no endpoint yet.
	insert("-p", "udp", "-s", "10.244.2.99", "-d", "10.96.0.22", "--sport", "1111", "--dport", "5000",
		"-r", "10.244.2.60", "-q", "10.244.2.99", "--reply-port-src", "5000", "--reply-port-dst", "1111")
	insert("-p", "udp", "-s", "10.244.2.99", "-d", "10.96.0.22", "--sport", "1112", "--dport", "5000",
		"-r", "10.244.2.61", "-q", "10.244.2.99", "--reply-port-src", "5000", "--reply-port-dst", "1112")
	insert("-p", "tcp", "--state", "ESTABLISHED", "-s", "10.244.2.99", "-d", "10.96.0.10", "--sport", "1113", "--dport", "80",
		"-r", "10.244.2.10", "-q", "10.244.2.99", "--reply-port-src", "8080", "--reply-port-dst", "1113")
	insert("-p", "udp", "-s", "10.244.2.99", "-d", "10.96.0.53", "--sport", "1114", "--dport", "53",
		"-r", "10.96.0.53", "-q", "10.244.2.99", "--reply-port-src", "53", "--reply-port-dst", "1114")

	next := cloneState(st)
	next.Service(np.Key).Ports[0].Endpoints = next.Service(np.Key).Ports[0].Endpoints[1:]
	web := next.Service(model.ServiceKey{Namespace: "default", Name: "web"})
	web.Ports[0].Endpoints = web.Ports[0].Endpoints[:2]
	next.Service(model.ServiceKey{Namespace: "default", Name: "dns"}).Ports[0].Endpoints = []model.Endpoint{ep("10.244.2.53", 53, "node2")}
	if _, err := b.Sync(ctx, next, model.Diff(st, next), false); err != nil {
		t.Fatal(err)
	}
	out, _ := r.Run(ctx, "conntrack", []string{"-L"}, nil)
	list := string(out)
	if strings.Contains(list, "sport=1111") || strings.Contains(list, "sport=1114") {
		t.Fatalf("stale UDP entries survived:\n%s", list)
	}
	if !strings.Contains(list, "sport=1112") || !strings.Contains(list, "sport=1113") {
		t.Fatalf("live UDP or TCP entries were deleted:\n%s", list)
	}
}
