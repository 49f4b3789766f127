#!/usr/bin/env bash
# Runs the real-node bench (test/realnode): a control plane and two kubelet nodes in network
# namespaces, svcproxy deployed with the shipped manifests, every scenario on each backend of
# REALNODE_MODES (default iptables,ebpf). Needs root, the kube binaries (hack/build-kube.sh)
# and the images (hack/build-image.sh); builds whatever is missing. Prints the results table:
# per scenario and backend, requests sent and failed.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
if [ -z "${KUBE_BIN_DIR:-}" ]; then
  KUBE_BIN_DIR=$(bash hack/build-kube.sh | tail -n1)
  export KUBE_BIN_DIR
fi
start=$(date +%s)
bash hack/build-image.sh >/dev/null || exit 1
echo "e2e-node: images ready in $(($(date +%s) - start))s"
go test -count=1 -timeout 45m -v -run 'TestRealNode$' ./test/realnode
