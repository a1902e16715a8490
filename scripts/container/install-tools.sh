#!/usr/bin/env bash
# Install Debian's docker.io (engine + client) and debootstrap when missing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PATH="$PATH:/usr/sbin:/sbin"
missing=()
# A host that already runs a Docker engine (Docker CE, say) keeps it: Debian's docker.io
# would conflict with it.
if ! docker_up && ! command -v dockerd >/dev/null 2>&1; then missing+=(docker.io); fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# debootstrap checks Debian's signatures, also on non-Debian hosts.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)

if [ ${#missing[@]} -eq 0 ]; then
    say "tools present: docker engine, debootstrap, Debian keyring"
    exit 0
fi
need_root "installing ${missing[*]}"
say "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
say "installed ${missing[*]}"
