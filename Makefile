# svcproxy — see README.md. Every target works on a fresh Debian machine as root after
# hack/install-deps.sh (which `make demo` and .ci/run call).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
BIN      := $(CURDIR)/bin
PKGS     := ./...

.PHONY: all build test test-unit test-root demo bench bench-full generate generate-check lint clean deps kube image e2e-node

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/svcproxy ./cmd/svcproxy-cni

deps:
	bash hack/install-deps.sh

# kube-apiserver, kube-proxy, kube-controller-manager, kube-scheduler, kubelet and kubectl
# v1.37.2 for the cluster e2e tests, the real-node bench and benchmarks (cached).
kube:
	bash hack/build-kube.sh

# The OCI image tars the real-kubelet bench imports (.cache/images/{svcproxy,pause,workload}.tar),
# built offline: the Dockerfile's image on a debootstrap'ed Debian base (cached), no registry.
image: deps
	VERSION=$(VERSION) COMMIT=$(COMMIT) bash hack/build-image.sh

# The real-node bench: two kubelet nodes, the shipped DaemonSet applied with kubectl, every
# scenario on iptables and eBPF; prints requests sent and failed per scenario (needs root).
e2e-node: deps build kube image
	bash hack/e2e-node.sh

# The whole suite: unit tests, BPF tests, netns integration, cluster e2e and the real-node
# bench (needs root).
test: deps build kube
	bash hack/test.sh

test-unit:
	$(GO) test -count=1 $(PKGS)

demo: deps build
	$(GO) run ./test/demo

bench: build kube
	bash hack/bench.sh

bench-full: build kube
	bash hack/bench.sh --full

generate:
	$(GO) generate ./bpf/... ./proxy/ebpf/...

# Fails when the committed BPF objects are not what `make generate` produces.
generate-check: generate
	@git diff --exit-code --stat -- bpf proxy/ebpf || (echo "committed BPF objects are stale: run make generate" && exit 1)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "not gofmt'ed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
