#!/usr/bin/env bash
# Everything the real-Kubernetes end-to-end suite (tests/kube) needs, each step skipped
# when already done; safe to rerun:
#   Debian packages (containerd, runc, CNI plugins, iptables, conntrack, openssl)
#   -> Kubernetes and etcd binaries built from Go modules (scripts/kube/build.sh, cached)
# The Unison image itself comes from scripts/container/prepare.sh.
#   bash scripts/kube/prepare.sh          # both steps
#   bash scripts/kube/prepare.sh deps     # only the Debian packages (CI builds in parallel)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[kube] %s\n' "$*" >&2; }
PATH="$PATH:/usr/sbin:/sbin"

declare -A provides=([containerd]=containerd [runc]=runc [iptables]=iptables
                     [conntrack]=conntrack [openssl]=openssl [nsenter]=util-linux
                     [ip]=iproute2)
missing=()
for tool in "${!provides[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${provides[$tool]}")
done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { say "error: installing ${missing[*]} needs root"; exit 1; }
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ "${1:-}" = deps ] && exit 0
command -v go >/dev/null 2>&1 || { say "error: Go is needed to build Kubernetes (go.dev/dl)"; exit 1; }
start=$(date +%s)
bash "$here/build.sh" >/dev/null
say "prepared in $(( $(date +%s) - start )) s"
