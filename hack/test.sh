#!/usr/bin/env bash
# Runs the whole test suite (what `make test` and CI run): unit tests, BPF program tests, the
# netns integration scenarios on every backend, and the cluster e2e against a real
# kube-apiserver + etcd. Needs root. Prints every test's result, then a summary line
# "N passed, N failed, N skipped"; skipped tests are listed by name.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
export SVCPROXY_BIN="${SVCPROXY_BIN:-$PWD/bin}"
export SVCPROXY_TEST_MODES="${SVCPROXY_TEST_MODES:-iptables,ebpf}"
if [ -z "${KUBE_BIN_DIR:-}" ] && [ -f .cache/kube/current ]; then
  KUBE_BIN_DIR="$(cat .cache/kube/current)"
  export KUBE_BIN_DIR
fi
log=.cache/test.log
# The real-node bench (test/realnode, `make e2e-node`) runs on its own after the rest: it
# starts two kubelet nodes and wants the machine's two cores to itself.
pkgs=$(go list ./... | grep -v '/test/realnode$')
go test -count=1 -p 2 -timeout 60m -v $pkgs >"$log" 2>&1
rc=$?
if [ "${SVCPROXY_SKIP_REALNODE:-}" = "" ]; then
  bash hack/e2e-node.sh >>"$log" 2>&1 || rc=1
fi
grep -E '^(=== NAME|ok |FAIL|panic:|--- FAIL|--- SKIP)|^\s+--- (PASS|FAIL|SKIP)|^--- PASS' "$log" | grep -v '^=== NAME' || true
echo "figures reported by the tests:"
grep -E 'crash test: [0-9]+ rounds|stopped receiving connections|IP of the deleted pod freed' "$log" | sed 's/^ */  /' | sort -u | head -20 || true
passed=$(grep -cE '^\s*--- PASS' "$log")
failed=$(grep -cE '^\s*--- FAIL' "$log")
skipped=$(grep -cE '^\s*--- SKIP' "$log")
if [ "$skipped" -gt 0 ]; then
  echo "skipped tests:"; grep -E '^\s*--- SKIP' "$log" -A2 | sed 's/^/  /'
fi
if [ $rc -ne 0 ]; then
  echo "go test failed (exit $rc); full log in $log. Failures:"
  grep -E -B30 '^\s*--- FAIL' "$log" | tail -200
fi
echo "$passed passed, $failed failed, $skipped skipped"
exit $rc
