#!/usr/bin/env bash
# Installs what svcproxy's build, tests and demo need on a Debian machine (run as root).
# Idempotent: packages already present are not fetched again.
set -euo pipefail
pkgs=(iptables iproute2 conntrack nftables curl ca-certificates kmod clang llvm libbpf-dev bpftool etcd-server git make debootstrap containerd runc containernetworking-plugins)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { [ -x /usr/local/go/bin/go ] && export PATH=$PATH:/usr/local/go/bin; }
go mod download
