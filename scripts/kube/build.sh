#!/usr/bin/env bash
# Builds (or restores from cache) the Kubernetes and etcd binaries of the test cluster.
# Prints the directory that holds them on its last line.
#
# The binaries come from the Go module proxy (tests/kube/build pins them) and are cached
# outside the repo, keyed on this script, go.mod, go.sum and the Go version, so only the
# first run on a machine compiles (15-25 min on 2 cores); later runs take a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
mod="$here/tests/kube/build"
cache_root=${UNISON_KUBE_CACHE:-/var/cache/unison-kube}
key=$( (cat "$0" "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go" "$mod/pause/main.go"; go version) \
    | sha256sum | cut -c1-16)
out="$cache_root/bin-$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd pause)

complete() { for b in "${bins[@]}"; do [ -x "$out/$b" ] || return 1; done; }

if complete; then
    echo "kube binaries: cached in $out" >&2
    echo "$out"
    exit 0
fi

mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$mod"
echo "kube binaries: downloading modules" >&2
go mod download
# -trimpath and no DWARF keep the binaries small (about 40% less); nothing here is debugged.
# The version is stamped as Kubernetes' own build does: without it the API server reports
# v0.0.0-master, and Helm refuses charts that name a kubeVersion.
version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' go.mod)
minor=$(echo "$version" | cut -d. -f2)
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
flags=(-trimpath -ldflags "-s -w$stamp")
# One `go build` for all of them: a single build graph keeps both cores busy, linking one
# binary while compiling the next one's packages. A line a minute shows it is alive.
cmds=()
for b in "${bins[@]}"; do
    case $b in etcd|pause) ;; *) cmds+=("k8s.io/kubernetes/cmd/$b") ;; esac
done
echo "kube binaries: compiling ${bins[*]} (15-25 min cold on 2 cores)" >&2
(while sleep 60; do
    echo "kube binaries: still compiling ($(( $(date +%s) - start )) s)" >&2
done) >/dev/null &
ticker=$!
trap 'kill "$ticker" 2>/dev/null; rm -rf "$tmp"' EXIT
go build "${flags[@]}" -o "$tmp/" "${cmds[@]}" ./etcd
kill "$ticker"
# The pod sandbox is static: its image holds nothing but this file.
CGO_ENABLED=0 go build "${flags[@]}" -o "$tmp/pause" ./pause
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
# Builds for other keys are 570 MB each and no longer used.
find "$cache_root" -maxdepth 1 -name 'bin-*' ! -path "$out" -exec rm -rf {} +
echo "kube binaries: built in $(( $(date +%s) - start )) s into $out" >&2
echo "$out"
