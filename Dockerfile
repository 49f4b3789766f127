# syntax=docker/dockerfile:1
# svcproxy image: the daemon, the CNI plugin (installed on the host by the DaemonSet's init
# container) and the userspace tools the iptables backend drives. See docs/cluster.md.
#   docker build -t svcproxy:latest --build-arg VERSION=$(git describe --tags --always) .

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
# The generated BPF objects are committed, so no clang is needed here.
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/ ./cmd/svcproxy ./cmd/svcproxy-cni

FROM debian:${DEBIAN_RELEASE}-slim
# iptables (nft and legacy variants; svcproxy picks the one the node uses), nft, conntrack
# (stale UDP entries), ip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables conntrack iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/svcproxy /out/svcproxy-cni /usr/local/bin/
COPY deploy/cni/10-svcproxy.conflist /usr/share/svcproxy/10-svcproxy.conflist
ENTRYPOINT ["/usr/local/bin/svcproxy"]
CMD ["run", "--config=/etc/svcproxy/config.yaml"]
