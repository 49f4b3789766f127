// Package ipam allocates and persists what svcproxy hands out on a node: pod IPs (from the
// node's podCIDRs, for svcproxy-cni), service VIPs (from the serviceCIDRs) and node ports
// (from the nodePortRange, health-check node ports included).
//
// Every allocation is one fsync'd bbolt transaction in the state directory, so a crash at any
// instant can at worst leak an item, never hand one to two owners. Each allocation records its
// owner, a monotonic generation number and its time; a release that names a generation frees
// nothing when the item was handed out again since. Freed pod IPs cool down before reuse, and
// allocation is idempotent per owner.
//
// The package knows nothing of iptables, BPF or the daemon API: the daemon exposes a
// PodAllocator to svcproxy-cni and uses a ServiceAllocator (a config.Allocator) for the
// standalone config. See docs/ipam.md.
package ipam
