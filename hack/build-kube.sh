#!/usr/bin/env bash
# build-kube.sh builds the upstream peers the e2e tests and benchmarks run against:
# kube-apiserver and kube-proxy, and for the real-node bench (make e2e-node)
# kube-controller-manager, kube-scheduler, kubelet and kubectl, from the k8s.io/kubernetes module pinned in
# test/e2e/tools/go.mod (a module of its own, so the daemon's go.mod never sees
# k8s.io/kubernetes). Every k8s.io staging module is replaced there by its v0.<minor>.<patch>
# release, which is what makes k8s.io/kubernetes buildable as a dependency.
#
# Output: $KUBE_CACHE_DIR (default .cache/kube/<version>/) holding the six binaries. A cache dir whose binaries exist and whose stamp matches is reused as is,
# so running this again costs nothing. Prints the cache dir on stdout as its last line.
#
# Usage: hack/build-kube.sh [--force]
# Env:   KUBE_CACHE_DIR  where to put the binaries (default .cache/kube/<version>)
#        GO              go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/test/e2e/tools"
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; fi

version=$(cd "$tools" && "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)
out=${KUBE_CACHE_DIR:-"$root/.cache/kube/$version"}
stamp="$out/.stamp"
bins=(kube-apiserver kube-controller-manager kube-proxy kube-scheduler kubectl kubelet)

have_all() {
	[[ -f "$stamp" && "$(cat "$stamp")" == "$version" ]] || return 1
	for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || return 1; done
}

if [[ $force == 0 ]] && have_all; then
	echo "build-kube: reusing $out ($version)" >&2
	echo "$out"
	exit 0
fi

mkdir -p "$out"
# Version stamping as the upstream release build does it (hack/lib/version.sh), so
# `kube-apiserver --version` and /version report the real release.
major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for p in "${pkgs[@]}"; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$minor"
	ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# One `go build` for all of them: the packages they share compile once.
start=$(date +%s)
tmp="$out/.build.tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
pkgpaths=()
for b in "${bins[@]}"; do pkgpaths+=("k8s.io/kubernetes/cmd/$b"); done
echo "build-kube: building ${bins[*]} $version into $out" >&2
(cd "$tools" && CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgpaths[@]}")
for b in "${bins[@]}"; do mv -f "$tmp/$b" "$out/$b"; done
rmdir "$tmp"
echo "build-kube: built in $(($(date +%s) - start))s" >&2
echo "$version" >"$stamp"
echo "$out"
