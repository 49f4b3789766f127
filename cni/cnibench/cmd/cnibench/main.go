// Command cnibench measures pod ADD and DEL latency through cnitool for svcproxy-cni (with
// the real svcproxy daemon) and for the reference bridge + host-local plugins, in network
// namespaces of its own, and writes a markdown report (docs/benchmarks-cni.md). Needs root.
//
//	go run ./cni/cnibench/cmd/cnibench --svcproxy bin/svcproxy --out docs/benchmarks-cni.md
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/svcproxy/svcproxy/cni/cnibench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(1)
	}
}

func run() error {
	var opts cnibench.Options
	var out, command string
	flag.IntVar(&opts.Pods, "pods", cnibench.DefaultPods, fmt.Sprintf("pods per round and plugin (1..%d)", cnibench.MaxPods))
	flag.IntVar(&opts.Rounds, "rounds", cnibench.DefaultRounds, fmt.Sprintf("rounds per plugin (1..%d), alternating which plugin goes first", cnibench.MaxRounds))
	flag.StringVar(&opts.Svcproxy, "svcproxy", "bin/svcproxy", "the svcproxy daemon binary")
	flag.StringVar(&opts.Bin, "cni-bin", "", "directory with cnitool, svcproxy-cni, bridge and host-local (built into a temp dir when empty; svcproxy-cni is taken from beside --svcproxy when there)")
	flag.StringVar(&out, "out", "", "write the markdown report to this file too (e.g. docs/benchmarks-cni.md)")
	flag.StringVar(&command, "command", "", "the command line to record in the report (default: this one)")
	flag.Parse()
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces)")
	}
	abs, err := filepath.Abs(opts.Svcproxy)
	if err != nil {
		return err
	}
	opts.Svcproxy = abs
	if command == "" {
		command = strings.Join(os.Args, " ")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if opts.Bin == "" {
		dir, err := os.MkdirTemp("", "cnibench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if os.Getenv("SVCPROXY_BIN") == "" {
			// BuildCNI takes svcproxy-cni from beside $SVCPROXY_BIN.
			os.Setenv("SVCPROXY_BIN", opts.Svcproxy)
		}
		log.Info("building cnitool, svcproxy-cni, bridge and host-local", "dir", dir)
		if err := cnibench.Build(ctx, dir); err != nil {
			return err
		}
		opts.Bin = dir
	}
	samples, err := cnibench.Run(ctx, opts)
	if err != nil {
		return err
	}
	rows, err := cnibench.Rows(samples)
	if err != nil {
		return err
	}
	if opts.Pods == 0 {
		opts.Pods = cnibench.DefaultPods
	}
	if opts.Rounds == 0 {
		opts.Rounds = cnibench.DefaultRounds
	}
	md := cnibench.Markdown(rows, cnibench.ThisMachine(), opts, command)
	fmt.Print(md)
	if out != "" {
		if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
	}
	return nil
}
