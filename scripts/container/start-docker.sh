#!/usr/bin/env bash
# Start a Docker engine in the background unless one already answers.
# --bridge=none/--iptables=false: containers here use --network host only, and this
# machine may not let us create bridges or NAT rules.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if docker_up; then
    say "docker engine already running"
    exit 0
fi
need_root "starting dockerd"
PATH="$PATH:/usr/sbin:/sbin"
command -v dockerd >/dev/null || die "dockerd not found; run scripts/container/install-tools.sh"
mkdir -p "$(dirname "$DOCKERD_LOG")"
say "starting dockerd --bridge=none (log: $DOCKERD_LOG)"
# setsid: the engine must outlive this script and the shell that called it.
setsid nohup dockerd --bridge=none --iptables=false --ip-masq=false \
    >"$DOCKERD_LOG" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if docker_up; then
        say "docker engine is up ($("$DOCKER" version --format '{{.Server.Version}}'))"
        exit 0
    fi
    sleep 1
done
tail -20 "$DOCKERD_LOG" >&2 || true
die "dockerd did not answer within 60s"
