#!/bin/bash
# Install cryedge as a systemd service, on this machine or into an image's root file system.
#
#   sudo systemd/install.sh                      # this machine: venv, config, user, unit, models, enable
#   sudo systemd/install.sh --root /mnt/rootfs   # into another root (same distribution and Python)
#
# Lays down (all relative to --root):
#   /opt/cryedge/venv                      python3 -m venv --system-site-packages (sees apt's picamera2),
#                                          the lock file's versions (requirements/<machine>.txt), then
#                                          cryedge (its default model is package data)
#   /opt/cryedge/models/landmarks          the landmark bundles (the service's $CRYEDGE_MODELS)
#   /opt/cryedge/libexec/cryedge-start     the unit's ExecStart: checks the venv can run cryedge, then runs it
#   /opt/cryedge/docs/service.md           the unit's Documentation=
#   /etc/cryedge/cryedge.toml              from examples/cryedge.toml; an existing one is kept
#   /etc/cryedge/mqtt_password             only with --mqtt-password-file (mode 0600, root)
#   /usr/lib/sysusers.d/cryedge.conf       the system user, created now and by systemd-sysusers at boot
#   /etc/systemd/system/cryedge.service    enabled (multi-user.target.wants); restarted if it was running or had failed
# Running it again gives the same tree (the config and password are never overwritten unasked).
#
# With --root the venv is made by this machine's python3 and its scripts are pointed at
# /opt/cryedge/venv, so the root must have the same Python at the same path (true for a chroot of
# the same release, e.g. pi-gen's; image/ runs this script inside the chroot instead).

set -euo pipefail

PREFIX=/opt/cryedge
UNIT_NAME=cryedge.service

usage() {
    cat <<EOF
usage: $0 [--root DIR] [--source DIR] [--package SPEC] [--lock FILE | --no-lock] [--pip-arg ARG]...
          [--python PATH] [--no-venv] [--no-models] [--no-enable] [--mqtt-password-file FILE]

  --root DIR            install into DIR (an image's root file system) instead of /
  --source DIR          the cryedge checkout (default: the one this script is in)
  --package SPEC        what pip installs into the venv (default: the checkout; a wheel path works)
  --lock FILE           the pinned dependencies, installed first with --require-hashes (default: the
                        checkout's requirements/<machine>.txt); the package then goes in with --no-deps
  --no-lock             no lock: pip resolves the package's dependencies itself (unpinned)
  --pip-arg ARG         an extra argument for pip install (repeatable, e.g. --pip-arg --no-deps)
  --python PATH         the interpreter the venv is made from (default: /usr/bin/python3, the one
                        apt's python3-picamera2 belongs to)
  --no-venv             leave /opt/cryedge/venv alone (it is made elsewhere, or not at all)
  --no-models           do not copy or fetch models
  --no-enable           do not enable the service
  --mqtt-password-file FILE
                        install FILE as /etc/cryedge/mqtt_password (0600), replacing an old one
EOF
}

log() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

ROOT=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACKAGE=""
PIP_ARGS=()
LOCK=""
USE_LOCK=1
PYTHON=/usr/bin/python3
VENV=1
MODELS=1
ENABLE=1
PASSWORD_FILE=""

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --package) PACKAGE="${2:?--package needs a path or requirement}"; shift 2 ;;
        --lock) LOCK="${2:?--lock needs a file}"; shift 2 ;;
        --no-lock) USE_LOCK=0; shift ;;
        --pip-arg) PIP_ARGS+=("${2:?--pip-arg needs an argument}"); shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --no-venv) VENV=0; shift ;;
        --no-models) MODELS=0; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --mqtt-password-file) PASSWORD_FILE="${2:?--mqtt-password-file needs a file}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
[ -f "$SOURCE/systemd/$UNIT_NAME" ] || die "$SOURCE is not a cryedge checkout (no systemd/$UNIT_NAME)"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
    [ "$ROOT" != "/" ] || ROOT=""
fi
[ -z "$PASSWORD_FILE" ] || [ -r "$PASSWORD_FILE" ] || die "cannot read $PASSWORD_FILE"
SOURCE="$(cd "$SOURCE" && pwd)"
# the repair cryedge-start and `cryedge run` name is this install again: the options it was given, paths made absolute
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
PACKAGE_GIVEN=$PACKAGE
if [ -n "$PACKAGE" ] && [ -e "$PACKAGE" ]; then PACKAGE="$(absolute "$PACKAGE")"; fi
[ -z "$LOCK" ] || LOCK="$(absolute "$LOCK")"
case "$PYTHON" in */*) PYTHON="$(absolute "$PYTHON")" ;; esac
PACKAGE="${PACKAGE:-$SOURCE}"
if [ "$USE_LOCK" -eq 1 ] && [ "$VENV" -eq 1 ]; then
    LOCK="${LOCK:-$SOURCE/requirements/$(uname -m).txt}"
    [ -f "$LOCK" ] || die "no lock file $LOCK for this machine ($(uname -m)); --no-lock installs unpinned"
    # A Python the checkout's lock has no wheels for (Trixie's 3.13 and the Pi's lock) is one line naming what is
    # supported and what to do, before anything is made, not pip's "no matching distribution" in a venv made again.
    if [ "$LOCK" = "$SOURCE/requirements/$(basename "$LOCK")" ] && why=$(PYTHONPATH="$SOURCE" "$PYTHON" -m \
            edge.installed --not-the-locks-python "$LOCK" --instead "sudo $0 --python /path/to/{python}"); then
        die "$why"
    fi
fi
VENV_DIR="$ROOT$PREFIX/venv"

install_user() {
    install -D -m 0644 "$SOURCE/systemd/cryedge.sysusers" "$ROOT/usr/lib/sysusers.d/cryedge.conf"
    install -d -m 0755 "$ROOT/etc"
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers ${ROOT:+--root="$ROOT"} cryedge.conf
    elif ! grep -q '^cryedge:' "$ROOT/etc/passwd" 2>/dev/null; then
        useradd ${ROOT:+--root "$ROOT"} --system --user-group --home-dir /var/lib/cryedge \
            --no-create-home --shell /usr/sbin/nologin --comment "cryedge cry detection" cryedge
    fi
}

# Why the venv cannot be used with $PYTHON (printed; status 0), or nothing (status 1): made by another
# Python, as an OS upgrade leaves it (edge.installed.made_by_another_python).
venv_made_by_another_python() {
    PYTHONPATH="$SOURCE" "$PYTHON" -m edge.installed --made-by-another-python "$VENV_DIR"
}

# pip takes a wheel, or cryedge==X from an index, of the version the venv holds as installed ("already installed
# with the same version"), whatever of cryedge's own files a half-finished pip or a damaged card took: this install,
# the repair cryedge-start names, left the venv as broken as it found it. Files missing or cut short (pip's RECORD,
# edge.installed) are installed again, cryedge alone; ARGs go to that pip install (--no-build-isolation).
install_package_again_if_damaged() {  # install_package_again_if_damaged [ARG]...
    local why
    why=$(PYTHONPATH="$SOURCE" "$VENV_DIR/bin/python" -m edge.installed --damaged cryedge) || return 0
    log "installing cryedge again from $PACKAGE: $why"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$@" \
        ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$PACKAGE"
}

# A path as the machine that runs this install sees it: inside --root, without it (a wheel outside the image's root
# stays as it is: the repair line says when it is not there).
seen_from_root() {
    if [ -n "$ROOT" ] && [[ "$1" == "$ROOT"/* ]]; then printf '%s\n' "${1#"$ROOT"}"; else printf '%s\n' "$1"; fi
}

# The command that installs this venv again, as run here: this script, and the options that decide what goes in
# (--package, --lock, --pip-arg, --python) or what is left alone (--no-models, --no-enable); not --root (the repair
# runs on the machine itself) nor --mqtt-password-file (kept). Sets AGAIN (shell-quoted) and NEEDS (the paths it
# reads, which edge.installed and cryedge-start check are still there when they print it).
repair_command() {
    local words=(sudo "$(seen_from_root "$SOURCE")/systemd/install.sh") arg path
    NEEDS=("$(seen_from_root "$SOURCE")/systemd/install.sh")
    if [ -n "$PACKAGE_GIVEN" ]; then
        path=$PACKAGE
        if [ -e "$PACKAGE" ]; then path="$(seen_from_root "$PACKAGE")"; NEEDS+=("$path"); fi
        words+=(--package "$path")
    fi
    if [ "$LOCK" != "$SOURCE/requirements/$(uname -m).txt" ]; then
        path="$(seen_from_root "$LOCK")"
        words+=(--lock "$path")
        NEEDS+=("$path")
    fi
    for arg in ${PIP_ARGS[@]+"${PIP_ARGS[@]}"}; do words+=(--pip-arg "$arg"); done
    if [ "$PYTHON" != /usr/bin/python3 ]; then
        words+=(--python "$PYTHON")
        case "$PYTHON" in /*) NEEDS+=("$PYTHON") ;; esac
    fi
    [ "$MODELS" -eq 1 ] || words+=(--no-models)
    [ "$ENABLE" -eq 1 ] || words+=(--no-enable)
    AGAIN=""
    for arg in "${words[@]}"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./=:,+@%-]+$ ]]; then AGAIN+="${AGAIN:+ }$arg"; else AGAIN+="${AGAIN:+ }$(printf '%q' "$arg")"; fi
    done
}

install_venv() {
    local why
    if why=$(venv_made_by_another_python); then
        # everything in it belongs to the old Python; the lock below fills it again
        log "making $PREFIX/venv again with $PYTHON: $why"
        "$PYTHON" -m venv --clear --system-site-packages "$VENV_DIR"
    elif [ ! -x "$VENV_DIR/bin/python" ]; then
        log "creating $PREFIX/venv"
        "$PYTHON" -m venv --system-site-packages "$VENV_DIR"
    fi
    local pip=("$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [ "$USE_LOCK" -eq 1 ]; then
        # exactly the lock's versions, hashes checked; then cryedge alone, built (from a checkout)
        # by the lock's setuptools without fetching anything unpinned
        log "pip install --require-hashes -r $LOCK"
        "${pip[@]}" --require-hashes ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} -r "$LOCK"
        log "pip install --no-deps $PACKAGE"
        "${pip[@]}" --upgrade --no-deps --no-build-isolation ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$PACKAGE"
        install_package_again_if_damaged --no-build-isolation
        # what an earlier lock pinned and this one does not, and a package no lock pins that wrote over a
        # pinned one's module, out; the lock recorded in the venv, which `cryedge run` compares with it
        local name="$LOCK"
        [ "$LOCK" != "$SOURCE/requirements/$(basename "$LOCK")" ] || name="requirements/$(basename "$LOCK")"
        local arg pip_args=() needs=()
        for arg in ${PIP_ARGS[@]+"${PIP_ARGS[@]}"}; do pip_args+=("--pip-arg=$arg"); done
        repair_command
        for arg in "${NEEDS[@]}"; do needs+=("--needs=$arg"); done
        PYTHONPATH="$SOURCE" "$VENV_DIR/bin/python" -m edge.installed --lock "$LOCK" --name "$name" \
            --again "$AGAIN" ${pip_args[@]+"${pip_args[@]}"} "${needs[@]}"
    else
        log "pip install $PACKAGE"
        "${pip[@]}" --upgrade ${PIP_ARGS[@]+"${PIP_ARGS[@]}"} "$PACKAGE"
        install_package_again_if_damaged
        rm -f "$VENV_DIR/cryedge-lock.txt"  # unpinned now: nothing to compare with
    fi
    if [ -n "$ROOT" ]; then
        # A venv records its own path: point scripts and pyvenv.cfg at where it lives in the image,
        # and recompile so that tracebacks name /opt/cryedge/... (/opt is read-only at run time).
        local file
        for file in "$VENV_DIR"/bin/* "$VENV_DIR/pyvenv.cfg"; do
            if [ -f "$file" ] && [ ! -L "$file" ] && grep -Iq "$VENV_DIR" "$file"; then
                sed -i "s|$VENV_DIR|$PREFIX/venv|g" "$file"
            fi
        done
        "$VENV_DIR/bin/python" -m compileall -q -f -s "$ROOT" -p / "$VENV_DIR/lib" >/dev/null
    fi
}

install_config() {
    install -d -m 0755 "$ROOT/etc/cryedge"
    local config="$ROOT/etc/cryedge/cryedge.toml"
    if [ -e "$config" ]; then
        log "keeping /etc/cryedge/cryedge.toml"
    elif [ -f "$SOURCE/examples/cryedge.toml" ]; then
        install -m 0644 "$SOURCE/examples/cryedge.toml" "$config"
    else
        printf '# cryedge configuration: see docs/service.md\n[source]\nuri = "picamera2"\n' >"$config"
        chmod 0644 "$config"
    fi
    if [ -n "$PASSWORD_FILE" ]; then
        # root-only; systemd hands it to the service as $CREDENTIALS_DIRECTORY/mqtt_password
        install -m 0600 -o root -g root "$PASSWORD_FILE" "$ROOT/etc/cryedge/mqtt_password"
    fi
}

install_models() {
    # the default cry model is package data; this folder is for the landmark bundles and own models
    install -d -m 0755 "$ROOT$PREFIX/models" "$ROOT$PREFIX/models/landmarks"
    if [ -x "$VENV_DIR/bin/cryedge" ]; then
        log "fetching landmark models into $PREFIX/models/landmarks"
        "$VENV_DIR/bin/cryedge" models fetch --output "$ROOT$PREFIX/models/landmarks"
    else
        log "no $PREFIX/venv/bin/cryedge: landmark models not fetched (run: cryedge models fetch --output $PREFIX/models/landmarks)"
    fi
}

install_unit() {
    install -D -m 0755 "$SOURCE/systemd/cryedge-start" "$ROOT$PREFIX/libexec/cryedge-start"
    install -D -m 0644 "$SOURCE/systemd/$UNIT_NAME" "$ROOT/etc/systemd/system/$UNIT_NAME"
    if [ -f "$SOURCE/docs/service.md" ]; then
        install -D -m 0644 "$SOURCE/docs/service.md" "$ROOT$PREFIX/docs/service.md"
    fi
    if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
    if [ "$ENABLE" -eq 1 ]; then
        # works offline too: in a chroot, or with --root, systemctl only writes the wants symlink
        systemctl ${ROOT:+--root="$ROOT"} --quiet enable "$UNIT_NAME"
    fi
}

# The service, when it runs, is restarted onto what was just installed: it kept the old install's modules in memory
# (and imported the new ones' lazily over them), and ran it until the next boot; "systemctl start" does nothing
# to a running service. One that failed (cryedge-start's "Repair it with: ... install.sh" on a broken venv) is
# started again: this was the repair. Not in an image (--root), nor where systemd does not run.
restart_if_running() {
    [ -z "$ROOT" ] && command -v systemctl >/dev/null || return 1
    if systemctl --quiet is-active "$UNIT_NAME" 2>/dev/null; then
        log "restarting $UNIT_NAME, which was running what was installed before"
    elif systemctl --quiet is-failed "$UNIT_NAME" 2>/dev/null; then
        log "starting $UNIT_NAME again, which had failed (journalctl -u cryedge -n 5 says why)"
    else
        return 1
    fi
    systemctl restart "$UNIT_NAME" ||
        die "$UNIT_NAME did not start again on this install: systemctl status cryedge; journalctl -u cryedge -n 20"
}

# tests/systemd/test_install.py sources this file for the functions above
[ -n "${CRYEDGE_INSTALL_FUNCTIONS_ONLY:-}" ] && return 0

install -d -m 0755 "$ROOT$PREFIX"
install_user
if [ "$VENV" -eq 1 ]; then install_venv; fi
install_config
if [ "$MODELS" -eq 1 ]; then install_models; fi
install_unit
if [ ! -x "$VENV_DIR/bin/cryedge" ]; then
    # what the unit starts: without it cryedge-start fails at every start of the unit (one line, exit 8)
    log "warning: no $PREFIX/venv/bin/cryedge (--no-venv): cryedge.service cannot start until that venv is made"
fi
if restart_if_running; then
    log "done."
else
    log "done. Edit /etc/cryedge/cryedge.toml ([mqtt] host, username), then: systemctl start cryedge"
fi
