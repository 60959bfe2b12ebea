#!/usr/bin/env bash
# Set up cryedge on a fresh Debian/Ubuntu machine (or a Pi): system packages, a venv in .venv
# installed from this platform's lock file (requirements/, exact versions with hashes), then cryedge
# itself, and the landmark model bundles. Idempotent; re-run it after `apt install python3-picamera2`
# and after a lock file changes (it also takes out what the old lock pinned and the new one does not).
#   ./setup.sh            everything (runtime + converter + tests): requirements/<machine>-dev.txt
#   ./setup.sh --runtime  the device runtime only (what a Pi needs): requirements/<machine>.txt
set -euo pipefail
cd "$(dirname "$0")"

say() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The lock file for this machine and this kind of install: requirements/<machine>.txt is the runtime,
# <machine>-dev.txt adds the converter and the tests (requirements/README.md).
lock_file() {  # lock_file MACHINE RUNTIME(0|1)
    local lock=requirements/$1.txt
    [ "$2" -eq 1 ] || lock=requirements/$1-dev.txt
    [ -f "$lock" ] || die "no $lock: this machine ($1) has no locked install$([ "$2" -eq 1 ] || echo ' of the converter and tests (try --runtime)')"
    echo "$lock"
}

# Nothing is installed with a Python a lock has no wheels for (Raspberry Pi OS Trixie's 3.13 and the Pi's lock): one
# line naming what is supported and what to do, not pip's "no matching distribution" or numpy built from source.
refuse_another_python() {  # refuse_another_python PYTHON LOCK AGAIN (the command, for the line)
    local why
    if why=$(PYTHONPATH=$PWD "$1" -m edge.installed --not-the-locks-python "$2" --instead "PYTHON=/path/to/{python} $3"); then
        die "$why"
    fi
}

# Why the venv at DIR cannot be used with PYTHON (printed; status 0), or nothing (status 1): made by
# another Python, as an OS upgrade leaves it (edge.installed.made_by_another_python).
venv_made_by_another_python() {  # venv_made_by_another_python DIR PYTHON
    PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" "$2" -m edge.installed --made-by-another-python "$1"
}

# Make the venv, or repair it: apt's python3-picamera2 (on a Pi) is seen through the system site
# packages, also when it was installed after the venv was made; a venv made by another Python (an OS
# upgrade) is made again, from PYTHON.
make_venv() {  # make_venv DIR PYTHON
    local venv=$1 python=$2 apt_packages=${APT_DIST_PACKAGES:-/usr/lib/python3/dist-packages}
    local flags=() why
    [ -e "$apt_packages/picamera2" ] && flags+=(--system-site-packages)
    if why=$(venv_made_by_another_python "$venv" "$python"); then
        grep -Eq '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" 2>/dev/null && flags=(--system-site-packages)
        say "making $venv again with $python: $why"
        "$python" -m venv --clear "${flags[@]}" "$venv"
    elif [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "${flags[@]}" "$venv"
    elif [ ${#flags[@]} -gt 0 ] && ! grep -Eq '^include-system-site-packages *= *true' "$venv/pyvenv.cfg"; then
        sed -i -E 's/^include-system-site-packages *=.*/include-system-site-packages = true/' "$venv/pyvenv.cfg"
        say "$venv now sees apt's packages (python3-picamera2 in $apt_packages)"
    fi
}

# Exactly the lock's versions (hashes checked); then what an earlier lock pinned and this one does not, and
# a package no lock pins that wrote over a pinned one's module (pip install opencv-python: its cv2), are
# taken out, and the lock is recorded in the venv, which `cryedge run` compares with it (edge/installed.py).
install_lock() {  # install_lock VENV LOCK AGAIN (the command that runs this again, for messages)
    "$1/bin/python" -m pip install -q --require-hashes -r "$2"
    PYTHONPATH=$PWD "$1/bin/python" -m edge.installed --lock "$2" --again "$3"
}

# The converter's tests check that converted models also load in tflite-runtime 2.14, the runtime older Pi images
# have; it needs numpy < 2, so it lives in a venv of its own, kept to its lock as .venv is to its (install_lock: what an
# older lock pinned taken out, damaged packages mended, the lock recorded). It was only `pip install -r`: what a new
# lock dropped stayed, and tests/convert/test_tflite_runtime.py ran whatever venv it found; it calls this too.
tflite_runtime_venv() {  # tflite_runtime_venv DIR PYTHON [LOCK]
    local venv=$1 python=$2 lock=${3:-requirements/tflite-runtime.txt} why
    if why=$(venv_made_by_another_python "$venv" "$python"); then
        say "making $venv again: $why"
        "$python" -m venv --clear "$venv"
    elif [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    install_lock "$venv" "$lock" ./setup.sh
}

# tests/test_setup.py sources this file for the functions above
[ -n "${CRYEDGE_SETUP_FUNCTIONS_ONLY:-}" ] && return 0

runtime=0
case "${1:-}" in
    --runtime) runtime=1 ;;
    "") ;;
    *) echo "usage: ./setup.sh [--runtime]" >&2; exit 2 ;;
esac
lock=$(lock_file "$(uname -m)" "$runtime")
python=${PYTHON:-python3}
again="./setup.sh$([ "$runtime" -eq 0 ] || echo ' --runtime')"
refuse_another_python "$python" "$lock" "$again"
[ "$runtime" -eq 1 ] || refuse_another_python "$python" requirements/tflite-runtime.txt "$again"

packages=()
while read -r package; do packages+=("$package"); done < <(grep -Ev '^(#|$)' requirements/apt-runtime.txt)
# mosquitto: the broker the tests talk to; systemd and shellcheck: the service and image tests verify
# the unit and the scripts; openssl: the TLS tests make a throw-away CA; ffmpeg and rtsp-server-perl:
# a real RTSP camera; alsa-utils: a stand-in microphone (arecord); espeak-ng and sox: speech for the
# synthetic sounds the default audio model is trained on; chromium: the live view's page, as a browser shows it.
[ "$runtime" -eq 0 ] && packages+=(mosquitto shellcheck systemd openssl libseccomp2 ffmpeg rtsp-server-perl \
    alsa-utils espeak-ng sox chromium)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive sudo_if_needed apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The tests start their own RTSP server on free ports; the package's service is not wanted running.
    if [[ " ${missing[*]} " == *" rtsp-server-perl "* ]] && [ -d /run/systemd/system ]; then
        sudo_if_needed systemctl disable --now rtsp-server-perl.service >/dev/null 2>&1 || true
    fi
fi

make_venv .venv "$python"
# The lock (install_lock), then cryedge itself without touching it; built without isolation by the
# lock's setuptools, so no unpinned build dependency is fetched.
install_lock .venv "$lock" "$again"
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv/bin/cryedge models fetch
# the converter's tests' tflite-runtime 2.14, in a venv of its own (tflite_runtime_venv)
if [ "$runtime" -eq 0 ]; then tflite_runtime_venv .venv-tflite-runtime "$python"; fi
