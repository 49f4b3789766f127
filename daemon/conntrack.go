package daemon

import (
	"context"
	"log/slog"
	"os/exec"
	"strings"
)

// natConntrackFlushes are the `conntrack -D` calls that remove what connections NATed by
// netfilter (the iptables backend's DNAT to endpoints) leave in the conntrack table when the
// node switches to the eBPF backend: TCP entries of closed or closing connections, and every
// UDP entry with destination NAT. The eBPF socket hooks connect clients straight to endpoint
// addresses, so a new connection (client:port -> endpoint) has the reply tuple of an old
// DNAT entry (client:port -> VIP, translated to that endpoint) whenever the kernel picks the
// same source port; the kernel then drops the new connection's packets until the old entry
// expires (TIME_WAIT: 2 minutes). Found on the real-node bench: after switching a node from
// iptables to eBPF, about one connection in a hundred from that node timed out for two
// minutes. Established TCP connections keep their entries: they still run on the NAT
// binding the entry holds.
func natConntrackFlushes() [][]string {
	var out [][]string
	// The TCP states of connections that carry no more data.
	for _, st := range []string{"SYN_SENT", "SYN_RECV", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"} {
		out = append(out, []string{"-D", "-p", "tcp", "--dst-nat", "--state", st})
	}
	return append(out, []string{"-D", "-p", "udp", "--dst-nat"})
}

// flushNATConntrack runs natConntrackFlushes; "0 flow entries" is not an error.
func flushNATConntrack(ctx context.Context, log *slog.Logger) {
	deleted := 0
	for _, args := range natConntrackFlushes() {
		out, err := exec.CommandContext(ctx, "conntrack", args...).CombinedOutput()
		n := deletedCount(string(out))
		deleted += n
		if err != nil && n == 0 && !strings.Contains(string(out), " 0 flow entries") {
			log.Warn("removing conntrack entries NATed by the iptables backend failed", "args", strings.Join(args, " "), "err", err, "output", strings.TrimSpace(string(out)))
		}
	}
	if deleted > 0 {
		log.Info("removed conntrack entries of closed connections NATed by the iptables backend", "entries", deleted)
	}
}

// deletedCount reads "N flow entries have been deleted" from conntrack's output.
func deletedCount(out string) int {
	i := strings.Index(out, " flow entries have been deleted")
	if i < 0 {
		return 0
	}
	f := strings.Fields(out[:i])
	if len(f) == 0 {
		return 0
	}
	n := 0
	for _, c := range f[len(f)-1] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}
