#!/usr/bin/env bash
# build-image.sh (make image) builds, offline, the OCI image tars the real-kubelet bench imports
# with `ctr -n k8s.io images import FILE`:
#   $IMAGES_DIR/svcproxy.tar  $SVCPROXY_IMAGE (localhost/svcproxy:dev): the Dockerfile's image
#   $IMAGES_DIR/pause.tar     registry.k8s.io/pause:3.10 (test/realnode/cmd/pause)
#   $IMAGES_DIR/workload.tar  localhost/svcproxy-workload:dev (test/realnode/cmd/workload)
# The work is test/realnode/cmd/mkimage's (it reads the Dockerfile); this script builds it and
# the two static test binaries in one go build, then calls it. The svcproxy image's Debian base
# is made with debootstrap (as root, from the host's apt mirror) on the first run and cached in
# $IMAGES_DIR/base-<hash>/, so later runs only rebuild the binaries.
#
# Env: IMAGES_DIR (default .cache/images), SVCPROXY_IMAGE, VERSION and COMMIT (as `make`
#      passes them; default from git), GO (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
out=${IMAGES_DIR:-$root/.cache/images}
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}

start=$(date +%s)
mkdir -p "$out"
tools=$(mktemp -d "$out/.tools-XXXXXX")
trap 'rm -rf "$tools"' EXIT
CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$tools/" \
	./test/realnode/cmd/mkimage ./test/realnode/cmd/pause ./test/realnode/cmd/workload

"$tools/mkimage" svcproxy -go "$GO" -cache "$out" -o "$out/svcproxy.tar" \
	-ref "${SVCPROXY_IMAGE:-localhost/svcproxy:dev}" -build-arg VERSION="$version" -build-arg COMMIT="$commit"
"$tools/mkimage" binary -ref registry.k8s.io/pause:3.10 -o "$out/pause.tar" "$tools/pause"
"$tools/mkimage" binary -ref localhost/svcproxy-workload:dev -o "$out/workload.tar" "$tools/workload"
echo "build-image: done in $(($(date +%s) - start)) s" >&2
