#!/usr/bin/env bash
# Build the wheelhouse the image installs from, for the image's Python (3.11):
#   build/wheels/deps/    every dependency, with the `operator` extra (kopf, kubernetes)
#                         (rebuilt only when pyproject.toml changes)
#   build/wheels/unison/  the project's own wheel (rebuilt every run)
# Built on the host because a container build cannot reach a package index here; it also
# makes image builds reproducible. Two folders let the image cache the dependency layer.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WHEELS="$BUILD_DIR/wheels"
LOG="$BUILD_DIR/wheelhouse.log"
IMAGE_PYTHON="${UNISON_IMAGE_PYTHON:-3.11}"
if [ -x "$REPO_ROOT/.venv/bin/python" ]; then PY="$REPO_ROOT/.venv/bin/python"; else PY=python3; fi

have="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$have" = "$IMAGE_PYTHON" ] || die "wheelhouse needs Python $IMAGE_PYTHON (the image's), $PY is $have"

pip_wheel() {
    "$PY" -m pip wheel "$@" >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; die "pip wheel failed (log: $LOG)"; }
}
clean_setuptools_build() {
    # setuptools reuses build/lib between builds; a module deleted from the tree would
    # otherwise live on in the wheel.
    rm -rf "$REPO_ROOT/build/lib" "$REPO_ROOT"/build/bdist.*
}

start=$(date +%s)
: >"$LOG"
mkdir -p "$WHEELS/deps" "$WHEELS/unison"
stamp="$WHEELS/deps/.pyproject.sha256"
want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
# Dependency wheels are also kept per machine, keyed by pyproject.toml, so a fresh clone
# (as CI makes) does not resolve and download them again.
CACHE="${UNISON_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/unison/wheels}/$want"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "dependency wheels in $WHEELS/deps are current"
elif [ -f "$CACHE/.complete" ]; then
    say "dependency wheels from the machine cache $CACHE"
    rm -f "$WHEELS"/deps/*.whl
    cp "$CACHE"/*.whl "$WHEELS/deps/"
    echo "$want" >"$stamp"
else
    say "building dependency wheels for Python $IMAGE_PYTHON into $WHEELS/deps"
    rm -f "$WHEELS"/deps/*.whl
    clean_setuptools_build
    pip_wheel -w "$WHEELS/deps" "$REPO_ROOT[operator]"
    rm -f "$WHEELS"/deps/unison-*.whl
    echo "$want" >"$stamp"
fi
if [ ! -f "$CACHE/.complete" ]; then
    mkdir -p "$CACHE"
    cp "$WHEELS"/deps/*.whl "$CACHE/" && touch "$CACHE/.complete"
fi
say "building the unison wheel into $WHEELS/unison"
rm -f "$WHEELS"/unison/*.whl
clean_setuptools_build
# A fixed zip timestamp makes the wheel byte-identical while the code is, so the image
# build below stays fully cached.
# Reuse the interpreter's own setuptools when it is recent enough: an isolated build
# environment costs more than building the wheel.
isolation=()
"$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
    2>/dev/null && isolation=(--no-build-isolation)
SOURCE_DATE_EPOCH=315532800 pip_wheel --no-deps "${isolation[@]}" -w "$WHEELS/unison" "$REPO_ROOT"
clean_setuptools_build
say "wheelhouse ready: $(ls "$WHEELS"/deps/*.whl | wc -l) dependencies + $(ls "$WHEELS"/unison/) in $(elapsed "$start")"
