#!/usr/bin/env bash
# One entry point for CI and developers: everything the container tests need, each step
# skipped when already done. Safe to rerun.
#   tools (apt: docker.io, debootstrap) -> dockerd -> base image -> wheelhouse -> image
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
here="$(dirname "${BASH_SOURCE[0]}")"
start=$(date +%s)
mkdir -p "$BUILD_DIR"
bash "$here/install-tools.sh"
bash "$here/start-docker.sh"
bash "$here/base-image.sh"
bash "$here/wheelhouse.sh"
bash "$here/build-image.sh"
say "prepared $IMAGE in $(elapsed "$start")"
