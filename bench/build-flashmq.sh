#!/usr/bin/env bash
# Builds FlashMQ (https://github.com/halfgaar/FlashMQ, C++) from source, outside this repository, as the second
# peer of bench/compare.sh. Nothing of FlashMQ's is copied into this repository: it is only built and run.
#
#   bench/build-flashmq.sh [--force] [GIT_DIR]
#
# GIT_DIR: a (bare) git repository of FlashMQ to take the source from, e.g. a local mirror; default
# $FLASHMQ_GIT_DIR, else /work/.mirror/halfgaar+FlashMQ/repo when that exists. Without one (or with GIT_DIR
# "none"), the tag is cloned from $FLASHMQ_GIT_URL (default https://github.com/halfgaar/FlashMQ.git) when a
# network is there.
#
# Environment:
#   FLASHMQ_HOME=~/.cache/flashmq   src/ (the extracted tag), src/FlashMQBuildRelease/ (cmake), bin/flashmq
#   FLASHMQ_TAG=v1.26.2            the release to build
#   FLASHMQ_JOBS=$(nproc)          make -j
#
# Idempotent: when $FLASHMQ_HOME/bin/flashmq exists and runs, it says so and exits 0 (--force rebuilds).
# The steps are those of FlashMQ's own build.sh for a Release build, without its man pages (they are in the
# source already), cpack and AppImage:
#   git archive $TAG | tar -x -C src            (or git clone --depth 1 --branch $TAG $URL src)
#   cd src/FlashMQBuildRelease && cmake -DCMAKE_BUILD_TYPE=Release .. && make -j$JOBS
#   install -m 755 flashmq $FLASHMQ_HOME/bin/flashmq
# Needs cmake, g++, make and OpenSSL headers: `apt-get install cmake g++ make libssl-dev` (done here when run
# as root with apt-get and something is missing).
# Exit status: 0 built (or already there), 1 the build failed, 2 a tool or the source is missing.
set -uo pipefail

FORCE=
GIT_DIR=${FLASHMQ_GIT_DIR:-}
for a in "$@"; do
    case "$a" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "build-flashmq: unknown option $a" >&2; exit 2 ;;
        *) GIT_DIR=$a ;;
    esac
done
if [ -z "$GIT_DIR" ] && [ -d /work/.mirror/halfgaar+FlashMQ/repo ]; then
    GIT_DIR=/work/.mirror/halfgaar+FlashMQ/repo
fi
[ "$GIT_DIR" = none ] && GIT_DIR=

HOME_DIR=${FLASHMQ_HOME:-$HOME/.cache/flashmq}
TAG=${FLASHMQ_TAG:-v1.26.2}
URL=${FLASHMQ_GIT_URL:-https://github.com/halfgaar/FlashMQ.git}
JOBS=${FLASHMQ_JOBS:-$(nproc 2>/dev/null || echo 2)}
SRC=$HOME_DIR/src
BUILD=$SRC/FlashMQBuildRelease
BIN=$HOME_DIR/bin/flashmq

fail() { # code message...
    local code=$1
    shift
    echo "build-flashmq: $*" >&2
    echo "build-flashmq: FlashMQ was NOT built; bench/compare.sh will skip it" >&2
    exit "$code"
}

if [ -z "$FORCE" ] && [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
    echo "build-flashmq: $BIN exists ($("$BIN" --version 2>/dev/null | grep -Eio 'flashmq.*version [^ ]+' | head -1)); nothing to do (--force rebuilds)"
    exit 0
fi

# 1. Tools.
missing=()
command -v git >/dev/null || missing+=(git)
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "build-flashmq: apt-get install -y ${missing[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            fail 2 "cannot install ${missing[*]} (try apt-get update first)"
    else
        fail 2 "missing ${missing[*]}: apt-get install ${missing[*]}"
    fi
fi

# 2. Source of $TAG in $SRC (kept between runs; the tag it holds is in $SRC/.flashmq-tag).
mkdir -p "$HOME_DIR/bin" || fail 2 "cannot create $HOME_DIR/bin"
if [ ! -f "$SRC/CMakeLists.txt" ] || [ "$(cat "$SRC/.flashmq-tag" 2>/dev/null)" != "$TAG" ]; then
    rm -rf "$SRC"
    mkdir -p "$SRC"
    if [ -n "$GIT_DIR" ]; then
        git --git-dir="$GIT_DIR" rev-parse --verify -q "$TAG^{commit}" >/dev/null ||
            fail 2 "$GIT_DIR has no tag $TAG (newest: $(git --git-dir="$GIT_DIR" tag --sort=-v:refname 2>/dev/null | head -1))"
        echo "build-flashmq: extracting $TAG from $GIT_DIR into $SRC" >&2
        git --git-dir="$GIT_DIR" archive "$TAG" | tar -x -C "$SRC" || fail 2 "cannot extract $TAG from $GIT_DIR"
        git --git-dir="$GIT_DIR" rev-parse "$TAG^{commit}" >"$SRC/.flashmq-commit"
    else
        echo "build-flashmq: cloning $TAG from $URL into $SRC" >&2
        git clone -q --depth 1 --branch "$TAG" "$URL" "$SRC" ||
            { rm -rf "$SRC"; fail 2 "cannot clone $URL (no network?); pass a git dir of FlashMQ as argument"; }
        git -C "$SRC" rev-parse HEAD >"$SRC/.flashmq-commit"
    fi
    echo "$TAG" >"$SRC/.flashmq-tag"
fi

# 3. Build (cmake from inside the build dir, as build.sh does: CMakeLists.txt runs ../.get-os-codename-and-stamp.sh).
mkdir -p "$BUILD" || fail 2 "cannot create $BUILD"
echo "build-flashmq: cmake -DCMAKE_BUILD_TYPE=Release && make -j$JOBS in $BUILD" >&2
(cd "$BUILD" && cmake -DCMAKE_BUILD_TYPE=Release .. >cmake.log 2>&1) ||
    fail 1 "cmake failed; see $BUILD/cmake.log"
(cd "$BUILD" && make -j"$JOBS" flashmq >make.log 2>&1) ||
    fail 1 "make failed; see $BUILD/make.log (last lines: $(tail -3 "$BUILD/make.log" | tr '\n' ' '))"
install -m 755 "$BUILD/flashmq" "$BIN.tmp" && mv "$BIN.tmp" "$BIN" || fail 1 "cannot install $BIN"
"$BIN" --version >/dev/null 2>&1 || fail 1 "$BIN does not run"
echo "build-flashmq: built $BIN: $("$BIN" --version 2>/dev/null | grep -Eio 'flashmq.*version [^ ]+' | head -1) ($TAG, commit $(cat "$SRC/.flashmq-commit"))"
