#!/usr/bin/env bash
# bench.sh runs svcproxy's benchmarks against kube-proxy v1.37.2 in one run and writes
# docs/benchmarks.md (what `make bench` and `make bench-full` call, after building bin/ and
# the kube binaries). Needs root. Nothing in it passes or fails on time.
#
# Usage: hack/bench.sh [--full] [extra svcbench run flags, e.g. --only ebpf --keep]
# Env:   KUBE_BIN_DIR  kube-apiserver and kube-proxy (default: what hack/build-kube.sh prints)
#        SVCPROXY_BIN  the svcproxy binary (default bin/svcproxy)
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

profile=quick
if [[ "${1:-}" == "--full" ]]; then profile=full; shift; fi

if [[ $(id -u) != 0 ]]; then
	echo "bench: needs root (network namespaces, iptables, BPF)" >&2
	exit 1
fi
kube=${KUBE_BIN_DIR:-$(bash hack/build-kube.sh | tail -n1)}
svcproxy=${SVCPROXY_BIN:-bin/svcproxy}
[[ -x "$svcproxy" ]] || { echo "bench: $svcproxy missing: run make build" >&2; exit 1; }
mkdir -p .cache
"$GO" build -o .cache/svcbench ./bench/cmd/svcbench
# Pod wiring: svcproxy-cni (real daemon) against the reference bridge + host-local plugins,
# ADD and DEL through cnitool, written to docs/benchmarks-cni.md.
"$GO" build -o .cache/cnibench ./cni/cnibench/cmd/cnibench
.cache/cnibench --svcproxy "$svcproxy" --out docs/benchmarks-cni.md --command "make bench   # = hack/bench.sh, which runs: .cache/cnibench --svcproxy $svcproxy --out docs/benchmarks-cni.md"
# A private copy: every case of the run uses the same binary even if bin/ is rebuilt meanwhile.
cp -f "$svcproxy" .cache/bench-svcproxy
svcproxy=.cache/bench-svcproxy

cmd="make bench   # = hack/bench.sh"
[[ $profile == full ]] && cmd="make bench-full   # = hack/bench.sh --full"
exec .cache/svcbench run --profile "$profile" --out docs/benchmarks.md --json .cache/bench-$profile.json \
	--header bench/header.md --svcproxy "$svcproxy" --kube-bin-dir "$kube" \
	--command "$cmd, which runs: .cache/svcbench run --profile $profile --svcproxy $svcproxy --kube-bin-dir $kube $*" "$@"
