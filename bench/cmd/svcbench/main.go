// Command svcbench runs svcproxy's benchmarks against kube-proxy (what `make bench` and
// `make bench-full` call through hack/bench.sh) and is also the small workload program the
// benchmark starts inside network namespaces:
//
//	svcbench run [--profile quick|full] [--out docs/benchmarks.md] --svcproxy BIN --kube-bin-dir DIR
//	svcbench report --json .cache/bench-quick.json --header bench/header.md --out docs/benchmarks.md
//	svcbench serve --name NAME --line :8080 --sink :9090   # in each pod
//	svcbench load --addr IP:PORT --workers N --duration D --max N   # new-connection rate, JSON
//	svcbench stream --addr IP:PORT --duration D                       # one stream's throughput, JSON
//	svcbench watch --addr IP:PORT [--want NAME] --timeout D           # until NAME answers, JSON
//
// run needs root; it creates and removes everything it uses (see bench/runner).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/svcproxy/svcproxy/bench/load"
	"github.com/svcproxy/svcproxy/bench/runner"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: svcbench run|report|serve|load|stream|watch [flags]")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = run(ctx, os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	case "serve":
		err = serve(ctx, os.Args[2:])
	case "load":
		err = rate(ctx, os.Args[2:])
	case "stream":
		err = stream(ctx, os.Args[2:])
	case "watch":
		err = watch(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "svcbench:", err)
		os.Exit(1)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func printJSON(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "", "name to answer with")
	var lineAddrs listFlag
	fs.Var(&lineAddrs, "line", "address of a line server (repeatable; default :8080)")
	sinkAddr := fs.String("sink", ":9090", "address of the stream sink")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		return fmt.Errorf("serve: --name is required")
	}
	if len(lineAddrs) == 0 {
		lineAddrs = listFlag{":8080"}
	}
	var lines []net.Listener
	for _, a := range lineAddrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		lines = append(lines, ln)
	}
	sink, err := net.Listen("tcp", *sinkAddr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	return load.Serve(ctx, *name, lines, sink)
}

func rate(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var s load.RateSpec
	fs.StringVar(&s.Addr, "addr", "", "IP:PORT")
	fs.IntVar(&s.Workers, "workers", 4, "concurrent workers")
	fs.DurationVar(&s.Duration, "duration", 3*time.Second, "length of the round")
	fs.IntVar(&s.Max, "max", 1000000, "most connections in all")
	fs.DurationVar(&s.Timeout, "timeout", time.Second, "per-connection timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := load.Rate(ctx, s)
	if err != nil {
		return err
	}
	return printJSON(res)
}

func stream(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	addr := fs.String("addr", "", "IP:PORT of a sink")
	d := fs.Duration("duration", 3*time.Second, "how long to send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	res, err := load.Stream(ctx, *addr, *d)
	if err != nil {
		return err
	}
	return printJSON(res)
}

func watch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	addr := fs.String("addr", "", "IP:PORT")
	want := fs.String("want", "", "server name to wait for (any when empty)")
	interval := fs.Duration("interval", time.Millisecond, "pause between attempts")
	timeout := fs.Duration("timeout", time.Minute, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Println("watching")
	res, err := load.Watch(ctx, *addr, *want, *interval, *timeout)
	if err != nil {
		return err
	}
	return printJSON(res)
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	profile := fs.String("profile", "quick", "quick or full")
	out := fs.String("out", "docs/benchmarks.md", "report to write")
	jsonOut := fs.String("json", "", "also write the raw results as JSON here")
	svcproxy := fs.String("svcproxy", "bin/svcproxy", "svcproxy binary")
	kubeBin := fs.String("kube-bin-dir", "", "directory with kube-apiserver and kube-proxy (hack/build-kube.sh)")
	only := fs.String("only", "", "run only the cases whose ID (impl/mode/source/services) matches this regexp")
	keep := fs.Bool("keep", false, "keep the work directory (logs) after the run")
	header := fs.String("header", "", "a markdown file to put before the generated part of the report")
	command := fs.String("command", "", "the command that started the run, for the report")
	perfDir := fs.String("perf", "", "record a perf(1) CPU profile of each svcproxy daemon into this directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("run needs root (network namespaces, iptables, BPF)")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	sp, err := filepath.Abs(*svcproxy)
	if err != nil {
		return err
	}
	if *kubeBin == "" {
		return fmt.Errorf("--kube-bin-dir is required (hack/build-kube.sh prints it)")
	}
	cases, err := runner.Profile(*profile)
	if err != nil {
		return err
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			return fmt.Errorf("--only: %w", err)
		}
		var keepCases []runner.Case
		for _, c := range cases {
			if re.MatchString(c.ID()) {
				keepCases = append(keepCases, c)
			}
		}
		cases = keepCases
	}
	work, err := os.MkdirTemp("", "svcbench-")
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := runner.Options{
		Profile: *profile, Svcproxy: sp, Self: self, KubeBinDir: *kubeBin, WorkDir: work, Keep: *keep, Logger: log,
		PerfDir: *perfDir, Workers: 4, RoundTime: 2 * time.Second, Rounds: 5, StreamTime: 2 * time.Second, StreamRounds: 3, Changes: 6,
	}
	if *profile == "full" {
		opts.RoundTime, opts.StreamTime, opts.StreamRounds, opts.Changes = 3*time.Second, 3*time.Second, 5, 10
	}
	start := time.Now()
	results, runErr := runner.Execute(ctx, opts, cases)
	if *keep {
		log.Info("work directory kept", "dir", work)
	}
	in := runner.ReportInput{Options: opts, Results: results, Command: *command, Took: time.Since(start), Finished: time.Now(),
		Machine: runner.MachineInfo(opts.KubeBinDir, opts.Svcproxy)}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(in, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if runErr != nil {
		return fmt.Errorf("run interrupted, report not written: %w", runErr)
	}
	if err := writeReport(in, *header, *out); err != nil {
		return err
	}
	log.Info("report written", "file", *out, "took", time.Since(start).Round(time.Second))
	return nil
}

func writeReport(in runner.ReportInput, header, out string) error {
	if header != "" {
		head, err := os.ReadFile(header)
		if err != nil {
			return err
		}
		in.Header = string(head)
	}
	md, err := runner.Report(in)
	if err != nil {
		return err
	}
	return os.WriteFile(out, []byte(md), 0o644)
}

// report renders a report again from the JSON a run saved (to change the header or the
// layout without measuring again).
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	jsonIn := fs.String("json", "", "results saved by run --json")
	out := fs.String("out", "docs/benchmarks.md", "report to write")
	header := fs.String("header", "", "markdown to put before the generated part")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(*jsonIn)
	if err != nil {
		return err
	}
	var in runner.ReportInput
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("%s: %w", *jsonIn, err)
	}
	return writeReport(in, *header, *out)
}
