package cnibench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/test/netns"
)

func msec(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestSummarize(t *testing.T) {
	// Round medians 3 ms and 30 ms; over all 10 samples the median is between 5 and 10 ms and
	// p90 interpolates between 40 and 50 ms.
	f := Summarize([][]time.Duration{{msec(1), msec(2), msec(3), msec(4), msec(5)}, {msec(10), msec(20), msec(30), msec(40), msec(50)}})
	if f.N != 10 || f.Median != 7500*time.Microsecond || f.P90 != 41*time.Millisecond || f.RoundMin != msec(3) || f.RoundMax != msec(30) {
		t.Errorf("Summarize = %+v, want N 10, median 7.5ms, p90 41ms, rounds 3ms-30ms", f)
	}
	if z := Summarize(nil); z.N != 0 || z.Median != 0 {
		t.Errorf("Summarize(nil) = %+v, want zero", z)
	}
}

func TestRowsAndMarkdown(t *testing.T) {
	samples := map[string]*Samples{
		Svcproxy:  {Add: [][]time.Duration{{msec(8), msec(10)}}, Del: [][]time.Duration{{msec(20), msec(20)}}},
		Reference: {Add: [][]time.Duration{{msec(16), msec(20)}}, Del: [][]time.Duration{{msec(10), msec(10)}}},
	}
	rows, err := Rows(samples)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Op != "ADD" || rows[0].RatioMedian != 0.5 || rows[1].Op != "DEL" || rows[1].RatioMedian != 2 {
		t.Fatalf("rows = %+v, want ADD ratio 0.5 and DEL ratio 2", rows)
	}
	md := Markdown(rows, Machine{CPUs: 2, CPUModel: "cpu", Kernel: "6.1", GoVersion: "go1.26"}, Options{Pods: 2, Rounds: 1}, "cnibench --pods 2")
	for _, want := range []string{
		"| ADD | 9.0 ms | 9.8 ms | 18.0 ms | 19.6 ms | 0.50 | 0.50 | 1 of 1 |",
		"| DEL | 20.0 ms | 20.0 ms | 10.0 ms | 10.0 ms | 2.00 | 2.00 | 0 of 1 |",
		"CPUs (nproc): 2", "kernel: 6.1", "Go: go1.26", "cnibench --pods 2", "# CNI benchmark",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if _, err := Rows(map[string]*Samples{Svcproxy: samples[Svcproxy]}); err == nil {
		t.Error("Rows without the reference's samples succeeded")
	}
}

func TestOptionsBounds(t *testing.T) {
	for _, o := range []Options{{Pods: MaxPods + 1, Svcproxy: "x", Bin: "y"}, {Rounds: MaxRounds + 1, Svcproxy: "x", Bin: "y"}, {Pods: -1, Svcproxy: "x", Bin: "y"}, {}} {
		if err := o.normalize(); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
	o := Options{Svcproxy: "x", Bin: "y"}
	if err := o.normalize(); err != nil || o.Pods != DefaultPods || o.Rounds != DefaultRounds {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

// TestRunSmall runs the benchmark for real with a few pods: both plugins, the real daemon.
func TestRunSmall(t *testing.T) {
	netns.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := t.TempDir()
	if err := Build(ctx, bin); err != nil {
		t.Fatal(err)
	}
	svcproxy, err := netns.BuildSvcproxy(ctx, bin)
	if err != nil {
		t.Fatal(err)
	}
	samples, err := Run(ctx, Options{Pods: 3, Rounds: 2, Svcproxy: svcproxy, Bin: bin})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{Svcproxy, Reference} {
		s := samples[name]
		if s == nil || len(s.Add) != 2 || len(s.Del) != 2 {
			t.Fatalf("%s: samples %+v, want 2 rounds of ADD and DEL", name, s)
		}
		for r := range s.Add {
			if len(s.Add[r]) != 3 || len(s.Del[r]) != 3 {
				t.Errorf("%s round %d: %d ADD and %d DEL samples, want 3 each", name, r, len(s.Add[r]), len(s.Del[r]))
			}
			for _, d := range append(append([]time.Duration(nil), s.Add[r]...), s.Del[r]...) {
				if d <= 0 {
					t.Errorf("%s round %d: non-positive latency %v", name, r, d)
				}
			}
		}
	}
	rows, err := Rows(samples)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", Markdown(rows, ThisMachine(), Options{Pods: 3, Rounds: 2}, "go test"))
	if entries, _ := os.ReadDir("/var/run/netns"); len(entries) > 0 {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), netns.RunPrefix()) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	}
}
