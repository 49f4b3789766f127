# syntax=docker/dockerfile:1
# svcproxy image: the daemon, the CNI plugin (installed on the host by the DaemonSet's init
# container, with the upstream portmap and loopback plugins), and the userspace tools the
# iptables backend drives. See docs/cluster.md.
#   docker build -t svcproxy:latest --build-arg VERSION=$(git describe --tags --always) .
# `make image` builds the same image without a registry (test/realnode/cmd/mkimage reads this
# file: keep the go build, apt-get install, COPY, ENTRYPOINT and CMD lines in this form).

ARG GO_VERSION=1.26
ARG DEBIAN_RELEASE=trixie

FROM golang:${GO_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
# The generated BPF objects are committed, so no clang is needed here. One go build for all
# binaries (shared packages compile once); portmap and loopback are the containernetworking
# plugins pinned in go.mod.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/ ./cmd/svcproxy ./cmd/svcproxy-cni \
      github.com/containernetworking/plugins/plugins/meta/portmap \
      github.com/containernetworking/plugins/plugins/main/loopback

FROM debian:${DEBIAN_RELEASE}-slim
# iptables (nft and legacy variants; svcproxy picks the one the node uses), nft, conntrack
# (stale UDP entries), ip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables conntrack iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/svcproxy /out/svcproxy-cni /usr/local/bin/
# Upstream CNI plugins for the init container to install on the node: portmap (hostPort
# support) and loopback (which containerd's CRI runs to bring up each pod's lo).
COPY --from=build /out/portmap /out/loopback /usr/share/svcproxy/cni/
COPY deploy/cni/10-svcproxy.conflist /usr/share/svcproxy/10-svcproxy.conflist
ENTRYPOINT ["/usr/local/bin/svcproxy"]
CMD ["run", "--config=/etc/svcproxy/config.yaml"]
