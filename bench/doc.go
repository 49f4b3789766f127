// Package bench holds svcproxy's benchmarks against kube-proxy: a workload generator
// (bench/workload), statistics helpers (bench/stats), the data-path load generator and
// servers (bench/load), the orchestration of one benchmark run in network namespaces
// (bench/runner) and the program that `make bench` runs (bench/cmd/svcbench), which writes
// docs/benchmarks.md. Nothing here passes or fails on time; the figures are the output.
package bench
