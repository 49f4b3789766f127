package ipam

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes this test binary as a child (TestMain sees crashChildEnv) that
// runs concurrent allocations and releases against the store until the parent SIGKILLs it at
// a random moment. The child appends a line to a side file after each operation returns (and
// before each release starts), so the parent knows what was handed out for sure.
const (
	crashChildEnv   = "SVCPROXY_IPAM_CRASH_CHILD"
	crashDirEnv     = "SVCPROXY_IPAM_CRASH_DIR"
	crashLogEnv     = "SVCPROXY_IPAM_CRASH_LOG"
	crashRoundEnv   = "SVCPROXY_IPAM_CRASH_ROUND"
	crashSeedEnv    = "SVCPROXY_IPAM_CRASH_SEED"
	crashRoundsEnv  = "SVCPROXY_IPAM_CRASH_ROUNDS" // optional: more rounds than the default
	crashWorkers    = 8
	crashSvcPerWkr  = 5
	crashHeldPerWkr = 12
	crashChildLimit = 20 * time.Second // a child whose parent died stops by itself
)

var (
	crashPodCIDRs  = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/120")}
	crashSvcCIDR   = netip.MustParsePrefix("10.96.0.0/26")
	crashPortRange = PortRange{30000, 30099}
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) == "1" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

func crashChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 3
	}
	round, _ := strconv.Atoi(os.Getenv(crashRoundEnv))
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	f, err := os.OpenFile(os.Getenv(crashLogEnv), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	report := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		// One write(2) per line, O_APPEND: a kill leaves whole lines (or a torn last one,
		// which the parent ignores).
		f.WriteString(fmt.Sprintf(format, args...) + "\n")
	}
	s, err := Open(os.Getenv(crashDirEnv), Options{PodCooldown: -1, LockTimeout: 10 * time.Second, Logger: quietLogger()})
	if err != nil {
		return fail(err)
	}
	pods, err := s.NewPodAllocator(crashPodCIDRs, "node1")
	if err != nil {
		return fail(err)
	}
	svcs, err := s.NewServiceAllocator(ServiceOptions{NodePortRange: crashPortRange, GracePeriod: time.Hour})
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range crashWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			var held []string
			for n := 0; time.Since(start) < crashChildLimit; n++ {
				op := rng.IntN(10)
				switch {
				case op < 5 && len(held) < crashHeldPerWkr:
					cid := fmt.Sprintf("r%d-w%d-%d", round, w, n)
					al, err := pods.AllocatePod(ctx, PodOwner{ContainerID: cid, IfName: "eth0", Namespace: "crash", Name: cid,
						Labels: map[string]string{"round": strconv.Itoa(round)}})
					if errors.Is(err, ErrExhausted) {
						continue
					}
					if err != nil {
						report("E allocate %s: %v", cid, err)
						continue
					}
					report("A %s %d %s", cid, al.Generation, strings.Join(ipsOf(al), ","))
					held = append(held, cid)
				case op < 8 && len(held) > 0:
					i := rng.IntN(len(held))
					cid := held[i]
					held = append(held[:i], held[i+1:]...)
					report("R %s", cid)
					if _, err := pods.ReleasePod(ctx, cid, "eth0"); err != nil {
						report("E release %s: %v", cid, err)
					}
				case op == 8:
					name := fmt.Sprintf("s%d", w+crashWorkers*rng.IntN(crashSvcPerWkr))
					vip, err := svcs.ServiceIP(svcKey(name), crashSvcCIDR, netip.Addr{})
					if err != nil {
						report("E vip %s: %v", name, err)
						continue
					}
					report("V %s %s", name, vip)
					np, err := svcs.NodePort(portKey(name, "http"), 0)
					if err != nil {
						report("E nodeport %s: %v", name, err)
						continue
					}
					report("P %s %d", name, np)
				case op == 9:
					name := fmt.Sprintf("s%d", w+crashWorkers*rng.IntN(crashSvcPerWkr))
					report("X %s", name)
					if _, err := svcs.ReleaseService(ctx, svcKey(name)); err != nil {
						report("E release service %s: %v", name, err)
					}
				}
			}
		})
	}
	wg.Wait()
	return 0
}

type podReport struct {
	round int
	gen   uint64
	ips   string
}

func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test re-executes the test binary 60 times")
	}
	// 60 rounds always run (each is bounded: the kill comes within 250 ms); extra rounds asked
	// for through the environment stop at a 4-minute bound.
	const minRounds = 60
	rounds := minRounds
	if v, err := strconv.Atoi(os.Getenv(crashRoundsEnv)); err == nil && v > rounds {
		rounds = v
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	ctx := context.Background()
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	deadline := time.Now().Add(4 * time.Minute)

	livePods := map[string]podReport{} // containerID -> what the child reported
	liveVIPs := map[string]string{}    // service -> VIP
	livePorts := map[string]string{}   // service -> node port
	var maxGenBefore uint64            // the highest generation reported in earlier rounds
	var reported, checks, released, done int
	for r := range rounds {
		if r >= minRounds && time.Now().After(deadline) {
			break
		}
		logPath := filepath.Join(dir, fmt.Sprintf("round-%03d.log", r))
		var out bytes.Buffer
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"=1", crashDirEnv+"="+stateDir, crashLogEnv+"="+logPath,
			crashRoundEnv+"="+strconv.Itoa(r), crashSeedEnv+"="+strconv.FormatUint(rng.Uint64(), 10))
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill at a random instant: while it opens the store, or amid the operations.
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL (%v); output:\n%s", r, err, out.String())
		}

		// What the child reported, in order (one owner is only ever served by one worker).
		var roundMin uint64
		lines, err := readLines(logPath)
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		for _, ln := range lines {
			f := strings.Fields(ln)
			switch f[0] {
			case "E":
				t.Fatalf("round %d: child error: %s", r, ln)
			case "A":
				gen, _ := strconv.ParseUint(f[2], 10, 64)
				if gen <= maxGenBefore {
					t.Fatalf("round %d: generation %d of %s is not above %d, the highest of earlier rounds", r, gen, f[1], maxGenBefore)
				}
				if roundMin == 0 || gen < roundMin {
					roundMin = gen
				}
				livePods[f[1]] = podReport{r, gen, f[3]}
				reported++
			case "R":
				delete(livePods, f[1])
			case "V":
				liveVIPs[f[1]] = f[2]
				reported++
			case "P":
				livePorts[f[1]] = f[2]
				reported++
			case "X":
				delete(liveVIPs, f[1])
				delete(livePorts, f[1])
			}
		}
		for _, ln := range lines {
			if f := strings.Fields(ln); f[0] == "A" {
				g, _ := strconv.ParseUint(f[2], 10, 64)
				maxGenBefore = max(maxGenBefore, g)
			}
		}

		// The store opens cleanly and is consistent.
		s, err := Open(stateDir, Options{PodCooldown: -1, LockTimeout: 10 * time.Second, Logger: quietLogger()})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", r, err)
		}
		if err := s.Check(ctx); err != nil {
			s.Close()
			t.Fatalf("round %d: store inconsistent after SIGKILL: %v", r, err)
		}
		// Every address reported as handed out (and not released since) is still held by its
		// owner, and no two live owners were given the same address.
		pa, err := s.NewPodAllocator(crashPodCIDRs, "node1")
		if err != nil {
			t.Fatal(err)
		}
		owners := map[string]string{}
		for cid, rep := range livePods {
			got, err := pa.CheckPod(ctx, cid, "eth0")
			if err != nil {
				t.Fatalf("round %d: %s was reported with %s (gen %d, round %d) but the store says: %v", r, cid, rep.ips, rep.gen, rep.round, err)
			}
			if ips := strings.Join(ipsOf(got), ","); ips != rep.ips || got.Generation != rep.gen {
				t.Fatalf("round %d: store has %s gen %d for %s, child reported %s gen %d", r, ips, got.Generation, cid, rep.ips, rep.gen)
			}
			for _, ip := range strings.Split(rep.ips, ",") {
				if o, dup := owners[ip]; dup {
					t.Fatalf("round %d: %s handed to both %s and %s", r, ip, o, cid)
				}
				owners[ip] = cid
			}
			checks++
		}
		items, err := s.Allocations(ctx)
		if err != nil {
			t.Fatal(err)
		}
		holders := map[string][]string{}
		for _, it := range items {
			k := string(it.Kind) + " " + it.Item
			if len(holders[k]) > 0 {
				t.Fatalf("round %d: %s listed twice", r, k)
			}
			holders[k] = it.Users
		}
		for name, vip := range liveVIPs {
			if h := holders["service "+vip]; len(h) != 1 || h[0] != "vip:default/"+name {
				t.Fatalf("round %d: VIP %s reported for %s is held by %v", r, vip, name, h)
			}
			if o, dup := owners[vip]; dup {
				t.Fatalf("round %d: VIP %s handed to both %s and %s", r, vip, o, name)
			}
			owners[vip] = name
			checks++
		}
		for name, port := range livePorts {
			if h := holders["nodePort "+port]; len(h) != 1 || h[0] != "np:default/"+name+":http/TCP" {
				t.Fatalf("round %d: node port %s reported for %s is held by %v", r, port, name, h)
			}
			if o, dup := owners[port]; dup {
				t.Fatalf("round %d: node port %s handed to both %s and %s", r, port, o, name)
			}
			owners[port] = name
			checks++
		}
		// Like CNI GC: keep this round's live pods, free the rest (the older rounds' pods and
		// whatever a kill leaked), so the ranges never fill up.
		var valid []Attachment
		for cid, rep := range livePods {
			if rep.round == r {
				valid = append(valid, Attachment{cid, "eth0"})
			}
		}
		// Collect under a tracker whose monotonic clock steps an hour per call: the first call
		// marks, the next ones free (at most half per call) until nothing is left to free.
		keep := map[string]bool{}
		for _, v := range valid {
			keep[podKey(v.ContainerID, v.IfName)] = true
		}
		var step time.Duration
		tr := NewGCTracker(time.Minute, func() time.Duration { step += time.Hour; return step })
		for i := 0; ; i++ {
			freed, err := pa.Collect(ctx, tr, func(al PodAllocation) bool { return keep[podKey(al.Owner.ContainerID, al.Owner.IfName)] })
			if err != nil {
				t.Fatal(err)
			}
			released += len(freed)
			if i > 0 && len(freed) == 0 {
				break
			}
		}
		for cid, rep := range livePods {
			if rep.round != r {
				delete(livePods, cid)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		done++
	}
	if reported == 0 {
		t.Fatal("the children reported no allocation at all: the kills came too early to test anything")
	}
	t.Logf("crash test: %d rounds (child SIGKILLed in each), %d allocations reported by children, %d allocation checks against the reopened store, %d leftover pod allocations freed by GC",
		done, reported, checks, released)
}

// readLines returns the complete lines of path (a torn last line is dropped).
func readLines(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if sc.Text() != "" {
			out = append(out, sc.Text())
		}
	}
	return out, sc.Err()
}
