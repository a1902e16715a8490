#!/usr/bin/env bash
# Build the Unison image (default unison:0.1.0) from the wheelhouse on the local base image.
# --network host: the build's RUN steps get the host's network (no bridge exists here);
# nothing is downloaded, pip installs with --no-index.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ls "$BUILD_DIR"/wheels/unison/unison-*.whl >/dev/null 2>&1 \
    || die "no wheelhouse in $BUILD_DIR/wheels; run scripts/container/wheelhouse.sh"
docker_up || die "no docker engine; run scripts/container/start-docker.sh"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    # A public base (e.g. python:3.11-slim-bookworm) where a registry is reachable.
    say "base image $BASE_IMAGE not present; trying docker pull"
    "$DOCKER" pull "$BASE_IMAGE" >/dev/null 2>&1 \
        || die "base image $BASE_IMAGE missing and cannot be pulled; run scripts/container/base-image.sh"
fi

say "docker build $IMAGE (BASE_IMAGE=$BASE_IMAGE)"
start=$(date +%s)
log="$BUILD_DIR/image-build.log"
build() {
    "$DOCKER" build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        -f "$REPO_ROOT/Dockerfile" "$@" "$REPO_ROOT" >>"$log" 2>&1 \
        || { tail -30 "$log" >&2; die "docker build failed (log: $log)"; }
}
: >"$log"
# The classic builder keeps its layer cache only in images; tagging the build stage keeps
# the dependency layer cached across runs, so a code change reinstalls one wheel only.
build --target build -t unison-build-cache:latest
build -t "$IMAGE"
# Untagged build-stage images and older builds of the tag only take disk.
for label in org.unison.stage=build org.opencontainers.image.title=unison; do
    "$DOCKER" image prune --force --filter "label=$label" >/dev/null 2>&1 || true
done
size="$("$DOCKER" image inspect "$IMAGE" --format '{{.Size}}')"
say "image $IMAGE built in $(elapsed "$start") ($((size / 1024 / 1024)) MiB)"
