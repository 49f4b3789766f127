// Package netns is svcproxy's real-kernel test harness. It builds throwaway topologies out of
// network namespaces it creates itself (a node with the svc0 bridge, pods on veths, an
// external client behind an underlay link), starts tiny servers in the pods that answer with
// their pod name, probes services from any namespace and counts which pod answered, and runs
// the real svcproxy binary inside the node namespace (start, wait ready, reload, stop, kill,
// cleanup).
//
// Everything it makes carries a random per-process prefix and is removed by Sandbox.Close,
// which the testing helpers register with t.Cleanup; SweepRun removes whatever a crashed test
// of the same process left behind. Nothing is ever added to the root network namespace: veth
// pairs are created with both ends already inside the harness's namespaces.
//
// The package needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and the ip(8) tool. The scenario table
// that drives svcproxy through it lives in this package's tests.
package netns
