#!/usr/bin/env bash
# Install Debian's docker.io (engine + client) and debootstrap when missing.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ]; then missing+=(docker.io); fi
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)

if [ ${#missing[@]} -eq 0 ]; then
    say "tools present: dockerd, docker, debootstrap"
    exit 0
fi
need_root "installing ${missing[*]}"
say "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
say "installed ${missing[*]}"
