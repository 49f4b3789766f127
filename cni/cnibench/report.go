package cnibench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/svcproxy/svcproxy/bench/stats"
)

// Figures summarise one operation of one plugin over every pod of every round.
type Figures struct {
	N      int
	Median time.Duration
	P90    time.Duration
	// RoundMin and RoundMax are the lowest and highest median of a single round.
	RoundMin, RoundMax time.Duration
}

// Summarize computes the figures of rounds of samples.
func Summarize(rounds [][]time.Duration) Figures {
	var all []float64
	f := Figures{}
	for i, r := range rounds {
		for _, d := range r {
			all = append(all, float64(d))
		}
		m := median(r)
		if i == 0 || m < f.RoundMin {
			f.RoundMin = m
		}
		if i == 0 || m > f.RoundMax {
			f.RoundMax = m
		}
	}
	f.N = len(all)
	if f.N == 0 {
		return f
	}
	f.Median = time.Duration(stats.Percentile(all, 50))
	f.P90 = time.Duration(stats.Percentile(all, 90))
	return f
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(stats.Median(xs))
}

// Row is one operation: both plugins' figures and svcproxy-cni's time over the reference's.
type Row struct {
	Op                    string
	Svcproxy, Reference   Figures
	RatioMedian, RatioP90 float64
	// Faster counts the rounds whose svcproxy-cni median is below the reference's median of
	// the same round (a paired comparison, robust against the machine's load drifting).
	Faster, Rounds int
}

// Rows turns Run's samples into the ADD and DEL rows.
func Rows(samples map[string]*Samples) ([]Row, error) {
	s, r := samples[Svcproxy], samples[Reference]
	if s == nil || r == nil {
		return nil, fmt.Errorf("cnibench: samples of %s and %s needed", Svcproxy, Reference)
	}
	mk := func(op string, a, b [][]time.Duration) Row {
		row := Row{Op: op, Svcproxy: Summarize(a), Reference: Summarize(b)}
		row.RatioMedian = stats.Ratio(float64(row.Svcproxy.Median), float64(row.Reference.Median))
		row.RatioP90 = stats.Ratio(float64(row.Svcproxy.P90), float64(row.Reference.P90))
		for i := 0; i < len(a) && i < len(b); i++ {
			row.Rounds++
			if median(a[i]) < median(b[i]) {
				row.Faster++
			}
		}
		return row
	}
	return []Row{mk("ADD", s.Add, r.Add), mk("DEL", s.Del, r.Del)}, nil
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUs      int
	CPUModel  string
	Kernel    string
	GoVersion string
	// Date is when the figures were taken (UTC).
	Date string
	// Load is /proc/loadavg's 1, 5 and 15 minute load averages when ThisMachine ran.
	Load string
}

// ThisMachine reads the CPU count and model, the kernel release, the Go version that built
// this program, the date and the load average.
func ThisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "unknown", Kernel: "unknown",
		Date: time.Now().UTC().Format("2006-01-02 15:04 MST")}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.Load = strings.Join(f[:3], " ")
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// Method is the header of the report: how the figures are taken.
const Method = `# CNI benchmark: svcproxy-cni vs bridge + host-local

What is measured: the wall time of one ` + "`cnitool add`" + ` and one ` + "`cnitool del`" + ` per pod, as a
container runtime on the node would run them: cnitool (the reference CNI client) is started
inside the node's network namespace (` + "`nsenter --net`" + `) and execs the plugin chain. So each figure
includes starting cnitool and the plugin binaries, which both sides pay alike.

* **svcproxy-cni**: conflist ` + "`{type: svcproxy-cni, apiSocket, capabilities: {labels: true}}`" + ` with the
  real ` + "`svcproxy`" + ` daemon (iptables mode) running in the node namespace, podCIDR ` + SvcproxyRangeText + `,
  and one service whose selector matches the pods' labels (passed as ` + "`CAP_ARGS`" + `), so every ADD and
  DEL also changes that service's endpoints (the daemon syncs them asynchronously). ADD is an
  HTTP round trip over the unix socket to the daemon (an fsync'd bbolt transaction) plus the
  netlink work (bridge, veth, addresses, routes); DEL is netlink plus the release.
* **bridge+host-local**: the reference plugins of containernetworking/plugins built from this
  module's tool dependencies, ` + "`bridge`" + ` (bridge ` + "`" + ReferenceBridge + "`" + ` in the node namespace,
  isDefaultGateway, hairpinMode) with ` + "`host-local`" + ` IPAM on ` + ReferenceRangeText + ` and a temporary dataDir.
* The same pod network namespaces serve both plugins. One unmeasured warm-up round of up to 10
  pods per plugin comes first (bridges made, caches warm). Pods are added one after another,
  then deleted one after another; each round does this for both plugins, and the plugin that
  goes first alternates between rounds. Every ADD result is checked (a fresh address from the
  plugin's range), and after the run the daemon and host-local must hold no address.
* Medians and 90th percentiles are over every pod of every round; "rounds" gives the lowest
  and highest per-round median, "rounds svcproxy-cni faster" in how many rounds its median
  was below the reference's of the same round. Ratio = svcproxy-cni / bridge+host-local (below 1: svcproxy-cni
  is faster). These are figures, not pass/fail. The per-round spread shows how busy the
  machine was; on a shared machine compare the ratios rather than absolute times.
`

// Text forms of the ranges for Method.
const (
	SvcproxyRangeText  = "10.244.16.0/20"
	ReferenceRangeText = "10.244.32.0/20"
)

// Markdown renders the report: Method, the table, the machine and the command.
func Markdown(rows []Row, m Machine, opts Options, command string) string {
	var b strings.Builder
	b.WriteString(Method)
	fmt.Fprintf(&b, "\n## Results\n\n%d pods per round, %d rounds per plugin (%d samples per figure).\n\n", opts.Pods, opts.Rounds, opts.Pods*opts.Rounds)
	b.WriteString("| operation | svcproxy-cni median | svcproxy-cni p90 | bridge+host-local median | bridge+host-local p90 | ratio median | ratio p90 | rounds svcproxy-cni faster | svcproxy-cni rounds | bridge+host-local rounds |\n")
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %.2f | %.2f | %d of %d | %s-%s | %s-%s |\n", r.Op,
			ms(r.Svcproxy.Median), ms(r.Svcproxy.P90), ms(r.Reference.Median), ms(r.Reference.P90),
			r.RatioMedian, r.RatioP90, r.Faster, r.Rounds, ms(r.Svcproxy.RoundMin), ms(r.Svcproxy.RoundMax), ms(r.Reference.RoundMin), ms(r.Reference.RoundMax))
	}
	fmt.Fprintf(&b, "\n## Machine\n\n* CPUs (nproc): %d (%s)\n* kernel: %s\n* Go: %s\n* taken: %s, load average at the end %s (other work on the machine)\n", m.CPUs, m.CPUModel, m.Kernel, m.GoVersion, m.Date, m.Load)
	fmt.Fprintf(&b, "\n## Command\n\n```sh\n%s\n```\n", command)
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
