#!/usr/bin/env bash
# Make the local base image (default unison-base:bookworm) from a debootstrapped minimal
# Debian bookworm, because no image registry is reachable here. Its python3 is 3.11.
# The root filesystem tarball is cached under build/ so a rerun only re-imports it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
TARBALL="$BUILD_DIR/base/$SUITE-rootfs.tar"

if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE present"
    exit 0
fi

if [ ! -s "$TARBALL" ]; then
    need_root "debootstrap"
    # The mirror: $DEBIAN_MIRROR, else the one apt uses on a Debian host, else
    # debootstrap's own default.
    mirror="${DEBIAN_MIRROR:-}"
    if [ -z "$mirror" ] && grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
        mirror="$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
            | grep -v security | grep -oE 'https?://[^ ]+' | head -1 || true)"
    fi
    keyring=()
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
        && keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
    rootfs="$BUILD_DIR/base/$SUITE-rootfs"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    say "debootstrap $SUITE (minbase + python3) from ${mirror:-the default mirror} into $rootfs"
    start=$(date +%s)
    /usr/sbin/debootstrap "${keyring[@]}" --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" ${mirror:+"$mirror"} >"$BUILD_DIR/base/debootstrap.log" 2>&1 \
        || { tail -20 "$BUILD_DIR/base/debootstrap.log" >&2; die "debootstrap failed"; }
    # Trim what an image never needs: package caches, docs, man pages, other locales.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/*.log
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
        -exec rm -rf {} + 2>/dev/null || true
    tar -C "$rootfs" --numeric-owner -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$rootfs"
    say "rootfs tarball $TARBALL ready in $(elapsed "$start")"
else
    say "using cached rootfs tarball $TARBALL"
fi

say "docker import $TARBALL as $BASE_IMAGE"
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$BASE_IMAGE" >/dev/null
say "base image $BASE_IMAGE imported"
