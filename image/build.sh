#!/bin/bash
# Build a Raspberry Pi OS Lite (Bookworm, arm64) image with cryedge installed and enabled.
#
#   sudo image/build.sh              # native pi-gen build (a Debian/Ubuntu host with pi-gen's depends)
#   sudo DOCKER=1 image/build.sh     # pi-gen's build-docker.sh instead
#
# Environment: PIGEN_DIR (default image/pi-gen), PIGEN_REF (default bookworm-arm64, pi-gen's 64-bit Bookworm branch:
# its arm64 branch builds Trixie since 2025, whose Python 3.13 the Pi's lock has no wheels for).
# The image gets the committed HEAD of this checkout (git archive): commit your changes first.
# The result is in $PIGEN_DIR/deploy/.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PIGEN_DIR="${PIGEN_DIR:-$HERE/pi-gen}"
PIGEN_REF="${PIGEN_REF:-bookworm-arm64}"
DOCKER="${DOCKER:-0}"

# The image gets HEAD (git archive below). A lock file or pyproject.toml changed and not committed (after
# requirements/refresh.sh) was left out without a word: the image installed HEAD's versions, not the ones this
# checkout's venv and tests run. Refused; other uncommitted changes are named in one warning.
locks=$( { git -C "$REPO" diff --name-only HEAD -- requirements pyproject.toml
           git -C "$REPO" ls-files --others --exclude-standard -- requirements; } | sort -u | paste -sd ' ' -)
if [ -n "$locks" ]; then
    echo "image/build.sh: error: not committed: $locks; the image gets HEAD's, so commit them first" >&2
    exit 1
fi
others=$(git -C "$REPO" status --porcelain | wc -l)
if [ "$others" -gt 0 ]; then
    echo "image/build.sh: warning: $others uncommitted changes are not in the image, which gets HEAD (git status)" >&2
fi

if [ ! -d "$PIGEN_DIR/.git" ]; then
    git clone --depth 1 --branch "$PIGEN_REF" https://github.com/RPi-Distro/pi-gen.git "$PIGEN_DIR"
fi
# A checkout of another branch (an earlier build's arm64, now Trixie's) built that release's stages, and install.sh
# inside it failed on its Python; it was reused without a word. (A detached HEAD: a PIGEN_REF tag, not checked.)
branch=$(git -C "$PIGEN_DIR" symbolic-ref --short -q HEAD 2>/dev/null || true)
if [ -n "$branch" ] && [ "$branch" != "$PIGEN_REF" ]; then
    echo "image/build.sh: error: $PIGEN_DIR is pi-gen's $branch branch, not $PIGEN_REF: remove it (rm -rf $PIGEN_DIR) to clone $PIGEN_REF, or set PIGEN_REF=$branch" >&2
    exit 1
fi

stage="$PIGEN_DIR/stage-cryedge"
rm -rf "$stage"
cp -a "$HERE/stage-cryedge" "$stage"
mkdir -p "$stage/01-cryedge/files/cryedge"
git -C "$REPO" archive --format=tar HEAD | tar -x -C "$stage/01-cryedge/files/cryedge"

if [ ! -f "$PIGEN_DIR/config" ]; then
    cp "$HERE/config" "$PIGEN_DIR/config"
fi
# only the cryedge image is exported, not the plain Lite one
touch "$PIGEN_DIR/stage2/SKIP_IMAGES"

cd "$PIGEN_DIR"
if [ "$DOCKER" = "1" ]; then
    ./build-docker.sh
else
    ./build.sh
fi
ls -l deploy/
