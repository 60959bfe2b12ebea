"""A Debian Bookworm arm64 root run under qemu-user: a stand-in for a Raspberry Pi in CI.

Two cached layers under ``CRYEDGE_ARM64_CACHE`` (default /var/cache/cryedge-arm64), outside the
checkout so that CI and re-runs reuse them:

- ``base-<key>``: ``debootstrap --foreign`` of Bookworm arm64 from this machine's Debian mirror,
  second stage under qemu (about 5-8 minutes on 2 cores). The key covers what goes into it.
- ``pi-<key>``: a copy of the base in which the README's Pi steps ran (apt packages, the checkout
  copied in as ``/root/cryedge``, ``./setup.sh --runtime``). The key is the sha256 of the aarch64
  lock file, setup.sh and the README's Pi block: when one changes, the layer is made again from
  the base. On every use the current checkout is copied in again and the steps run again (they
  are idempotent), so what is tested is always this checkout.

Commands run in a private mount namespace (``unshare --mount``), so the mounts of /proc, /dev and
the fake /proc/cpuinfo vanish with the process. Two quirks of qemu-user 7.2, not of a Pi, are
handled here: qemu-user shows the host's x86 /proc/cpuinfo, on which LiteRT's CPU probing
segfaults, so an aarch64 one is bind-mounted over it; and qemu's default ``max`` CPU makes
XNNPACK's int8 kernels give wrong results, so QEMU_CPU is always set.

Run ``python tests/arm64/piroot.py build`` to make (or check) the cached root by hand.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CRYEDGE_ARM64_CACHE", "/var/cache/cryedge-arm64"))
SUITE = "bookworm"
# debootstrap's minimal root plus what makes it a usable shell for the README's steps: sudo (the
# steps say `sudo apt install`), certificates for pip, and python3 (Raspberry Pi OS ships it).
BASE_PACKAGES = ("ca-certificates", "sudo", "python3")
# Changing how the base is made changes its key, so an old cached base is not reused.
BASE_RECIPE = f"{SUITE} arm64 minbase {' '.join(BASE_PACKAGES)} v1"
# The CPUs of the Pis people own: ARMv8.0 (Pi 4, Pi 400, CM4, Pi 3, Zero 2 W) and ARMv8.2 (Pi 5).
CPUS = {
    "cortex-a72": "cpuinfo-cortex-a72.txt",
    "cortex-a76": "cpuinfo-cortex-a76.txt",
}
CHECKOUT_IN_ROOT = "/root/cryedge"
PI_SECTION = "## On a Raspberry Pi"
# What the host needs, from Debian's apt: qemu-user-static registers qemu-aarch64 with binfmt_misc.
HOST_PACKAGES = ("debootstrap", "qemu-user-static", "binfmt-support")


class RootError(RuntimeError):
    """The arm64 root cannot be built or run here; the message says why and what to install."""


def log(message: str) -> None:
    print(f"[piroot {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (not the security archive); deb.debian.org if none."""
    texts = []
    for path in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]:
        if path.is_file() and path.suffix in (".list", ".sources", ""):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for uri in re.findall(r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, flags=re.M):
            if uri.rstrip("/").endswith("/debian") and not uri.startswith("#"):
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def pi_steps(readme: Path = REPO / "README.md") -> list[str]:
    """The shell lines of the first ```bash block of the README's Raspberry Pi section."""
    text = readme.read_text()
    start = text.find(PI_SECTION)
    if start < 0:
        raise RootError(f"{readme} has no section starting {PI_SECTION!r}")
    block = re.search(r"```bash\n(.*?)```", text[start:], flags=re.S)
    if block is None:
        raise RootError("the README's Pi section has no ```bash block")
    lines = []
    for line in block.group(1).splitlines():
        command = line.split("  #")[0].strip() if "  #" in line else line.strip()
        if command and not command.startswith("#"):
            lines.append(command)
    return lines


def lock_file() -> Path | None:
    """The aarch64 lock file, when the checkout has one."""
    lock = REPO / "requirements" / "aarch64.txt"
    return lock if lock.is_file() else None


def pi_key() -> str:
    digest = hashlib.sha256(BASE_RECIPE.encode())
    for path in (lock_file(), REPO / "setup.sh"):
        if path is not None:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update("\n".join(pi_steps()).encode())
    return digest.hexdigest()[:16]


def base_key() -> str:
    return hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:16]


# --- host checks -------------------------------------------------------------------------------

def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, text=True, capture_output=True, **kwargs)


def enable_binfmt() -> None:
    """qemu-aarch64 registered with binfmt_misc (mounting it if needed), or a RootError saying why."""
    if os.geteuid() != 0:
        raise RootError("the arm64 root needs root (debootstrap, chroot, mounts); run the tests as root")
    if any(shutil.which(tool) is None for tool in ("debootstrap", "qemu-aarch64-static", "update-binfmts")):
        # Like setup.sh, the check installs what it needs from Debian's apt (CI starts from a clean machine).
        log(f"apt-get install {' '.join(HOST_PACKAGES)}")
        result = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *HOST_PACKAGES],
                      env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
        if result.returncode != 0:
            _run(["apt-get", "update", "-qq"], timeout=1800)
            result = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *HOST_PACKAGES],
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
        if result.returncode != 0:
            raise RootError(f"cannot install {' '.join(HOST_PACKAGES)}: {(result.stderr or result.stdout).strip()[-500:]}")
    missing = [tool for tool in ("debootstrap", "qemu-aarch64-static", "update-binfmts", "unshare", "chroot", "dpkg-deb")
               if shutil.which(tool) is None]
    if missing:
        raise RootError(f"missing {', '.join(missing)}: apt-get install {' '.join(HOST_PACKAGES)}")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        result = _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
        if result.returncode != 0:
            raise RootError(f"cannot mount binfmt_misc: {result.stderr.strip()}")
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        result = _run(["update-binfmts", "--enable", "qemu-aarch64"])
        if result.returncode != 0 or not entry.exists():
            raise RootError(f"cannot register qemu-aarch64 with binfmt_misc: {(result.stderr or result.stdout).strip()}")
    text = entry.read_text()
    if "enabled" not in text:
        raise RootError(f"{entry} is not enabled:\n{text}")
    # F: the kernel opens the interpreter at registration, so it works inside a chroot without a copy.
    if not re.search(r"^flags:.*F", text, flags=re.M):
        raise RootError(f"{entry} lacks the F flag (qemu-user-static registers it with F); got:\n{text}")


# --- running commands in a root ----------------------------------------------------------------

def run_in_root(
    root: Path, script: str, *, cpu: str = "cortex-a72", env: dict[str, str] | None = None,
    timeout: float = 3600, cwd: str = "/root", check: bool = True,
) -> subprocess.CompletedProcess:
    """``script`` (bash) in ``root`` under ``QEMU_CPU=cpu`` with an aarch64 /proc/cpuinfo; output captured."""
    cpuinfo = HERE / CPUS[cpu]
    environment = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": cpu, "DEBIAN_FRONTEND": "noninteractive",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180", "TERM": "dumb",
        **(env or {}),
    }
    r = shlex.quote(str(root))
    inner = " && ".join([
        f"mount -t proc proc {r}/proc",
        f"mount --bind {shlex.quote(str(cpuinfo))} {r}/proc/cpuinfo",
        f"mount -t sysfs sysfs {r}/sys",
        f"mount --rbind /dev {r}/dev",
        f"mount -t tmpfs tmpfs {r}/tmp",
        f"cp /etc/resolv.conf {r}/etc/resolv.conf",
        f"exec chroot {r} /usr/bin/env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in environment.items())} "
        f"/bin/bash -c {shlex.quote(f'cd {cwd} && {script}')}",
    ])
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner],
        check=False, text=True, capture_output=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout + "\n" + result.stderr).strip().splitlines()[-40:])
        raise RootError(f"in the arm64 root ({cpu}), `{script}` exited {result.returncode}:\n{tail}")
    return result


# --- the layers --------------------------------------------------------------------------------

def _trust_host_certificates(root: Path) -> None:
    """The host's local CAs (a TLS-inspecting egress proxy here) trusted in the root too, for pip."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        target = root / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for cert in local.glob("*.crt"):
            shutil.copy2(cert, target / cert.name)


STANDIN_REPO = "/var/local/cryedge-standins"
PICAMERA2_STANDIN = '''"""STAND-IN for Raspberry Pi OS's python3-picamera2, made by cryedge's CI (tests/arm64/piroot.py).

Debian has no picamera2 (it comes from archive.raspberrypi.com, out of this machine's reach). Like
the real package, it lives in /usr/lib/python3/dist-packages and uses the numpy the process finds
(on a Pi, apt's is Bookworm's 1.24): what matters for the venv's --system-site-packages.
"""

import numpy

__version__ = "0+cryedge.standin"


class Picamera2:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("stand-in picamera2: there is no camera in cryedge's CI root")
'''


def add_standin_packages(root: Path) -> None:
    """A local apt repository in ``root`` with a stand-in ``python3-picamera2`` (Debian lacks it).

    It depends on python3-numpy, so the root gets Bookworm's numpy 1.24 in dist-packages, as a Pi
    with apt's picamera2 has, and the README's apt line runs unchanged.
    """
    repo = root / STANDIN_REPO.lstrip("/")
    if (repo / "Packages").exists():
        return
    staging = CACHE / "standin-build"
    shutil.rmtree(staging, ignore_errors=True)
    package = staging / "python3-picamera2"
    module = package / "usr/lib/python3/dist-packages/picamera2"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text(PICAMERA2_STANDIN)
    (package / "DEBIAN").mkdir()
    control = (
        "Package: python3-picamera2\nVersion: 0~cryedge.standin\nArchitecture: all\n"
        "Maintainer: cryedge CI <ci@cryedge.invalid>\nDepends: python3, python3-numpy\n"
        "Section: python\nPriority: optional\n"
        "Description: stand-in for Raspberry Pi OS's picamera2 in cryedge's CI root\n"
    )
    (package / "DEBIAN/control").write_text(control)
    deb = staging / "python3-picamera2_0~cryedge.standin_all.deb"
    result = _run(["dpkg-deb", "--root-owner-group", "--build", str(package), str(deb)])
    if result.returncode != 0:
        raise RootError(f"dpkg-deb failed: {result.stderr.strip()}")
    repo.mkdir(parents=True, exist_ok=True)
    shutil.copy2(deb, repo / deb.name)
    data = deb.read_bytes()
    stanza = control + (f"Filename: ./{deb.name}\nSize: {len(data)}\n"
                        f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    (repo / "Packages").write_text(stanza + "\n")
    (root / "etc/apt/sources.list.d/cryedge-standins.list").write_text(f"deb [trusted=yes] file:{STANDIN_REPO} ./\n")
    shutil.rmtree(staging, ignore_errors=True)


def build_base() -> Path:
    """The debootstrapped Bookworm arm64 root, built once per ``BASE_RECIPE``."""
    enable_binfmt()
    final = CACHE / f"base-{base_key()}"
    if (final / ".complete").exists():
        return final
    work = CACHE / f"base-{base_key()}.partial"
    mirror = debian_mirror()
    started = time.monotonic()
    # An interrupted build resumes after its last finished stage (the second stage alone takes minutes).
    if not (work / ".second-stage-done").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log(f"debootstrap {SUITE} arm64 from {mirror} into {work} (first stage)")
        result = _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--foreign",
                       f"--include={','.join(BASE_PACKAGES)}", SUITE, str(work), mirror], timeout=3600)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RootError(f"debootstrap (first stage) from {mirror} failed:\n{tail}")
        log(f"second stage under qemu ({time.monotonic() - started:.0f} s so far)")
        run_in_root(work, "/debootstrap/debootstrap --second-stage", timeout=3600, cwd="/")
        (work / ".second-stage-done").write_text("")
    (work / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    # The README's `sudo apt install` asks before installing; CI answers yes, as a user would.
    (work / "etc/apt/apt.conf.d/90cryedge-ci").write_text('APT::Get::Assume-Yes "true";\n')
    _trust_host_certificates(work)
    run_in_root(work, "update-ca-certificates >/dev/null && apt-get clean", cwd="/")
    (work / ".complete").write_text(f"{BASE_RECIPE}\nbuilt in {time.monotonic() - started:.0f} s\n")
    work.rename(final)
    log(f"base root ready in {time.monotonic() - started:.0f} s: {final}")
    return final


def checkout_files() -> list[str]:
    """The checkout's files as a user's clone has them: tracked or new, not ignored (no .venv, no models)."""
    result = _run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    if result.returncode != 0:
        raise RootError(f"git ls-files failed in {REPO}: {result.stderr.strip()}")
    return [name for name in result.stdout.split("\0") if name and (REPO / name).is_file()]


def copy_checkout(root: Path) -> None:
    """This checkout's files into the root's clone, replacing what was there (the venv and bundles stay)."""
    target = root / CHECKOUT_IN_ROOT.lstrip("/")
    keep = {".venv", "models"}
    if target.exists():
        for child in target.iterdir():
            if child.name not in keep:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for name in checkout_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)


def prune(keep: set[Path]) -> None:
    """Older keyed layers go: each holds a venv of several hundred MB."""
    if not CACHE.is_dir():
        return
    for path in CACHE.iterdir():
        if path not in keep and (path.name.startswith("pi-") or path.name.startswith("base-")):
            log(f"removing the outdated layer {path}")
            shutil.rmtree(path, ignore_errors=True)


def pi_root(cpu: str = "cortex-a72") -> tuple[Path, list[tuple[str, float]]]:
    """The root with this checkout set up by the README's Pi steps; and each step's seconds."""
    base = build_base()
    final = CACHE / f"pi-{pi_key()}"
    if not (final / ".copied").exists():
        shutil.rmtree(final, ignore_errors=True)
        work = CACHE / f"pi-{pi_key()}.partial"
        shutil.rmtree(work, ignore_errors=True)
        log(f"copying the base root into {work}")
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(work)], check=True)
        (work / ".complete").unlink()
        (work / ".copied").write_text("")
        work.rename(final)
    prune({base, final})
    add_standin_packages(final)
    # A Pi's apt has package lists; a fresh debootstrap's are for its own run only.
    run_in_root(final, "apt-get update -qq", cpu=cpu, timeout=1800)
    copy_checkout(final)
    timings = []
    cwd = "/root"
    for step in pi_steps():
        started = time.monotonic()
        if step.startswith("git clone "):
            # The checkout under test is already copied in where the clone would put it.
            match = re.search(r"&&\s*cd\s+(\S+)", step)
            cwd = f"/root/{match.group(1)}" if match else CHECKOUT_IN_ROOT
            continue
        if ".venv/bin/cryedge run" in step:
            continue  # the live-camera command: the test runs the demo clip instead
        log(f"{cpu}: {step}")
        run_in_root(final, step, cpu=cpu, cwd=cwd, timeout=3600)
        timings.append((step, time.monotonic() - started))
    (final / ".complete").write_text("\n".join(f"{s:.0f} s  {step}" for step, s in timings) + "\n")
    return final, timings


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "build"
    try:
        if command == "base":
            print(build_base())
        elif command == "build":
            root, timings = pi_root()
            for step, seconds in timings:
                print(f"{seconds:7.1f} s  {step}")
            print(root)
        elif command == "run":
            result = run_in_root(CACHE / f"pi-{pi_key()}", argv[3], cpu=argv[2], cwd=CHECKOUT_IN_ROOT, check=False)
            print(result.stdout + result.stderr)
            return result.returncode
        else:
            print(f"usage: {argv[0]} base|build|run CPU SCRIPT", file=sys.stderr)
            return 2
    except RootError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
