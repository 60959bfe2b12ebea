#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml and the *.in files in this folder (see README.md).
#
#   requirements/refresh.sh                      after adding or changing a dependency: keeps every
#                                                pin that still fits, resolves only what changed
#   requirements/refresh.sh --upgrade            newest versions that fit, everywhere
#   requirements/refresh.sh --upgrade-package X  newest X that fits (repeatable)
#
# Needs uv (in the dev extra: .venv/bin/uv after ./setup.sh) and PyPI. Extra arguments go to every
# `uv pip compile`. The locks are resolved for Python 3.11 on manylinux glibc 2.36 (Debian and
# Raspberry Pi OS Bookworm), whatever machine runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

uv=${UV:-}
if [ -z "$uv" ]; then
    if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv
    elif command -v uv >/dev/null; then uv=$(command -v uv)
    else echo "refresh.sh: needs uv: run ./setup.sh (the dev extra installs it) or pip install uv" >&2; exit 1
    fi
fi

compile() {  # compile OUTPUT PLATFORM INPUT...
    local output=$1 platform=$2
    shift 2
    # a fixed header (no command line with this machine's paths): diffs show only what changed
    "$uv" pip compile --quiet --generate-hashes --custom-compile-command requirements/refresh.sh \
        --python-version 3.11 --python-platform "$platform" --output-file "$output" "$@" "${extra[@]}"
    echo "refresh.sh: $output ($(grep -c '^[a-z0-9]' "$output") packages)"
}

extra=("$@")
compile requirements/x86_64-dev.txt x86_64-manylinux_2_36 \
    pyproject.toml --extra convert --extra dev requirements/x86_64-dev.in
# the runtime alone, with the same versions as the dev lock
compile requirements/x86_64.txt x86_64-manylinux_2_36 \
    pyproject.toml requirements/x86_64-dev.in --constraint requirements/x86_64-dev.txt
compile requirements/aarch64.txt aarch64-manylinux_2_36 \
    pyproject.toml requirements/aarch64.in
compile requirements/tflite-runtime.txt x86_64-manylinux_2_36 \
    requirements/tflite-runtime.in
