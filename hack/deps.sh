#!/usr/bin/env bash
# Installs the Debian packages bungeo needs to build and test, and checks for cargo.
# Idempotent and non-interactive: when every package is installed already it touches nothing.
# Usage: hack/deps.sh [--force]   (--force runs apt-get update and install regardless)
set -euo pipefail

packages=(
  protobuf-compiler           # protoc, for the CRI protobufs (k8s-cri)
  pkg-config
  libseccomp-dev              # seccomp filters
  docker-registry             # the test registry
  apache2-utils               # htpasswd, for the registry with Basic auth
  busybox-static              # the test images are built from /bin/busybox
  containerd                  # the reference daemon of the differential suites (brings runc)
  crun                        # second reference OCI runtime for hack/bench runtime
  containernetworking-plugins # CNI plugins (/usr/lib/cni)
  iptables                    # used by the CNI portmap plugin
  curl
  jq
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${1:-}" = "--force" ]; then
  missing=("${packages[@]}")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
  fi
  echo "hack/deps.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "hack/deps.sh: cargo is not on PATH; install Rust >= 1.90 with rustup (https://rustup.rs)" >&2
  exit 1
fi
