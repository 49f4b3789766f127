// Command svcproxy is the svcproxy node daemon and its command-line tool: run, check, status,
// cleanup and version (see docs/cli.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/svcproxy/svcproxy/api"
	"github.com/svcproxy/svcproxy/config"
	"github.com/svcproxy/svcproxy/daemon"
)

// Set at link time by the Makefile.
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `svcproxy: a node service proxy (VIPs, load balancing, pod IPAM)

Usage:
  svcproxy run --config FILE                 standalone daemon (desired state from FILE)
  svcproxy run --kubeconfig FILE [--config FILE]   cluster daemon (state from the Kubernetes API)
  svcproxy check --config FILE               validate FILE; print every problem; exit 1 if any
  svcproxy status [--json]                   ask the running daemon for its state
  svcproxy cleanup                           remove every rule, program, map and route svcproxy made
  svcproxy version                           print version information

Common flags: --config FILE, --node-name NAME, --mode auto|iptables|ebpf, --state-dir DIR,
              --api-socket PATH, -v LEVEL
Exit codes: 0 ok, 1 bad input, 2 runtime failure.
`

// Exit codes of the contract.
const (
	exitOK      = 0
	exitInput   = 1
	exitRuntime = 2
)

type common struct {
	config, nodeName, mode, stateDir, apiSocket string
	verbosity                                   int
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.config, "config", "", "config file (ProxyConfig)")
	fs.StringVar(&c.nodeName, "node-name", "", "this node's name (default: config nodeName, NODE_NAME, hostname)")
	fs.StringVar(&c.mode, "mode", "", "backend: auto, iptables or ebpf (overrides the config)")
	fs.StringVar(&c.stateDir, "state-dir", "", "state directory (overrides the config)")
	fs.StringVar(&c.apiSocket, "api-socket", "", "daemon API socket (overrides the config)")
	fs.IntVar(&c.verbosity, "v", 0, "log verbosity: 0 info, 1 and more debug")
}

func (c *common) options(log *slog.Logger) daemon.Options {
	return daemon.Options{ConfigPath: c.config, NodeName: c.nodeName, Mode: c.mode, StateDir: c.stateDir,
		APISocket: c.apiSocket, Version: version, Logger: log}
}

func (c *common) logger(w io.Writer) *slog.Logger {
	lvl := slog.LevelInfo
	if c.verbosity > 0 {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return exitInput
		}
		return exitOK
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("svcproxy "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	var kubeconfig string
	var asJSON bool
	switch cmd {
	case "run":
		fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (cluster mode)")
	case "status":
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	case "check", "cleanup", "version":
	default:
		fmt.Fprintf(stderr, "svcproxy: unknown command %q\n\n%s", cmd, usage)
		return exitInput
	}
	if err := fs.Parse(args); err != nil {
		return exitInput
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "svcproxy %s: unexpected arguments %q\n", cmd, fs.Args())
		return exitInput
	}
	log := c.logger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "svcproxy %s\ncommit: %s\ngo: %s %s/%s\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "check":
		return check(c.config, stdout, stderr)
	case "run":
		opts := c.options(log)
		opts.Kubeconfig = kubeconfig
		return exitCode(stderr, daemon.Run(ctx, opts))
	case "status":
		return status(ctx, c, log, asJSON, stdout, stderr)
	case "cleanup":
		return exitCode(stderr, daemon.Cleanup(ctx, c.options(log)))
	}
	return exitInput
}

func exitCode(stderr io.Writer, err error) int {
	if err == nil || errors.Is(err, context.Canceled) {
		return exitOK
	}
	fmt.Fprintf(stderr, "svcproxy: %v\n", err)
	var ie *daemon.InputError
	if errors.As(err, &ie) {
		return exitInput
	}
	return exitRuntime
}

func check(path string, stdout, stderr io.Writer) int {
	if path == "" {
		fmt.Fprintln(stderr, "svcproxy check: --config FILE is required")
		return exitInput
	}
	cfg, err := config.Load(path)
	if err == nil {
		_, err = cfg.BuildState(cfg.NodeName, nil, config.NewMemAllocator())
	}
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				fmt.Fprintln(stdout, p.String())
			}
			fmt.Fprintf(stdout, "%s: %d problem(s)\n", path, len(ce.Problems))
		} else {
			fmt.Fprintf(stdout, "%s: %v\n", path, err)
		}
		return exitInput
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return exitOK
}

func status(ctx context.Context, c common, log *slog.Logger, asJSON bool, stdout, stderr io.Writer) int {
	sock := c.apiSocket
	if sock == "" {
		cfg, err := daemon.LoadSettings(c.options(log))
		if err != nil {
			fmt.Fprintf(stderr, "svcproxy status: %v\n", err)
			return exitInput
		}
		sock = cfg.APISocket
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := api.NewClient(sock).Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "svcproxy status: %v\n", err)
		return exitRuntime
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
		return exitOK
	}
	printStatus(stdout, s)
	return exitOK
}

func printStatus(w io.Writer, s *api.Status) {
	fmt.Fprintf(w, "node:        %s\n", s.NodeName)
	fmt.Fprintf(w, "mode:        %s", s.Mode)
	if s.ModeReason != "" {
		fmt.Fprintf(w, " (%s)", s.ModeReason)
	}
	fmt.Fprintf(w, "\nsource:      %s\n", s.Source)
	health := "healthy"
	if !s.Healthy {
		health = "UNHEALTHY: " + s.HealthReason
	}
	fmt.Fprintf(w, "health:      %s\n", health)
	if s.LastSync.IsZero() {
		fmt.Fprintf(w, "last sync:   never\n")
	} else {
		fmt.Fprintf(w, "last sync:   %s (%s ago, took %s), generation %d/%d\n", s.LastSync.Format(time.RFC3339),
			time.Since(s.LastSync).Round(time.Second), s.LastSyncDuration, s.AppliedGeneration, s.DesiredGeneration)
	}
	if s.LastSyncError != "" {
		fmt.Fprintf(w, "sync error:  %s\n", s.LastSyncError)
	}
	if s.ConfigError != "" {
		fmt.Fprintf(w, "config error (last good config still programmed):\n  %s\n", strings.ReplaceAll(s.ConfigError, "\n", "\n  "))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nSERVICE\tTYPE\tVIP\tPORT\tENDPOINTS\n")
	for _, sv := range s.Services {
		for _, p := range sv.Ports {
			port := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
			if p.NodePort != 0 {
				port += fmt.Sprintf(" (node %d)", p.NodePort)
			}
			var eps []string
			for _, e := range p.Endpoints {
				eps = append(eps, e.Address+" "+e.State)
			}
			if len(eps) == 0 {
				eps = []string{"none (refused)"}
			}
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\t%s\n", sv.Namespace, sv.Name, sv.Type, strings.Join(sv.ClusterIPs, ","), port, strings.Join(eps, ", "))
		}
	}
	tw.Flush()
	if len(s.IPAM) > 0 {
		fmt.Fprintln(w, "\nIPAM:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "KIND\tRANGE\tUSED\tSIZE\tCOOLING\n")
		for _, r := range s.IPAM {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\n", r.Kind, r.Range, r.Used, r.Size, r.Cooling)
		}
		tw.Flush()
	}
	if len(s.Pods) > 0 {
		fmt.Fprintln(w, "\nPODS:")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "POD\tCONTAINER\tIFNAME\tIPS\n")
		for _, p := range s.Pods {
			id := p.ContainerID
			if len(id) > 12 {
				id = id[:12]
			}
			fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%s\n", p.Namespace, p.Name, id, p.IfName, strings.Join(p.IPs, ","))
		}
		tw.Flush()
	}
}
