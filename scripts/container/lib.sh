# Shared helpers for scripts/container/*.sh (sourced, not run).
# Every step says what it does on stderr so CI logs explain themselves.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${UNISON_BUILD_DIR:-$REPO_ROOT/build}"
BASE_IMAGE="${UNISON_BASE_IMAGE:-unison-base:bookworm}"
IMAGE="${UNISON_IMAGE:-unison:0.1.0}"
DOCKERD_LOG="${UNISON_DOCKERD_LOG:-$BUILD_DIR/dockerd.log}"
# The docker.io client from Debian matches the daemon we start; another client earlier on
# PATH (a newer CLI without buildx) would refuse or warn on `docker build`.
if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
export DOCKER_BUILDKIT=0

say() { printf '[container] %s\n' "$*" >&2; }
die() { printf '[container] error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root (apt-get, dockerd); run as root"
}

docker_up() { "$DOCKER" info >/dev/null 2>&1; }

elapsed() { echo $(( $(date +%s) - $1 ))s; }
