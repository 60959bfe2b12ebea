#!/usr/bin/env bash
# Set up cryedge on a fresh Debian/Ubuntu machine (or a Pi): system packages, a venv in .venv with
# the runtime, converter and test extras, and the landmark model bundles. Idempotent.
#   ./setup.sh            everything (runtime + converter + tests)
#   ./setup.sh --runtime  the device runtime only (what a Pi needs)
set -euo pipefail
cd "$(dirname "$0")"

extras="convert,dev"
[ "${1:-}" = "--runtime" ] && extras=""

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# libgl1: mediapipe's opencv-contrib needs libGL.so.1; mosquitto: the broker the tests talk to;
# systemd and shellcheck: the service and image tests verify the unit and the scripts;
# openssl: the TLS tests make a throw-away CA; ffmpeg and rtsp-server-perl: a real RTSP camera.
packages=(python3-venv libgl1 libglib2.0-0)
[ -n "$extras" ] && packages+=(mosquitto shellcheck systemd openssl libseccomp2 ffmpeg rtsp-server-perl)
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

python=${PYTHON:-python3}
# On a Pi, picamera2 comes from apt (python3-picamera2) and is seen through system site packages.
venv_flags=()
[ -e /usr/lib/python3/dist-packages/picamera2 ] && venv_flags+=(--system-site-packages)
[ -x .venv/bin/python ] || "$python" -m venv "${venv_flags[@]}" .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install -q -e ".[$extras]"
else
    .venv/bin/python -m pip install -q -e .
fi
.venv/bin/cryedge models fetch

# The converter's tests check that converted models also load in tflite-runtime 2.14, the runtime
# older Pi images have; it needs numpy < 2, so it lives in a venv of its own.
if [ -n "$extras" ] && [ ! -x .venv-tflite-runtime/bin/python ]; then
    "$python" -m venv .venv-tflite-runtime
    .venv-tflite-runtime/bin/python -m pip install -q tflite-runtime==2.14.0 'numpy<2'
fi
