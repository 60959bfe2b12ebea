"""What the native libraries need from the machine: CPU extensions, system libraries, quiet logs.

The CPU check runs on the real installed mediapipe library and on a stand-in library file that holds
the start-up guard's messages as mediapipe 1.2.3's aarch64 build does (its ``libmediapipe.so`` lists
aes, crc, dotprod, fp16, lse, rcpc, rdm, sha2). The cpuinfo files are as a Pi 4 and a Pi 5 show them.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge import native
from edge.errors import InstallError

REPO = Path(__file__).resolve().parents[2]

PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Revision\t: c03114
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
PI5_CPUINFO = PI4_CPUINFO.replace(
    "fp asimd evtstrm crc32 cpuid",
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
).replace("0xd08", "0xd0b").replace("Raspberry Pi 4 Model B Rev 1.4", "Raspberry Pi 5 Model B Rev 1.0")
ARMV82_GUARD = [b"aes", b"crc", b"dotprod", b"fp16", b"lse", b"rcpc", b"rdm", b"sha2"]


def stand_in_library(path: Path, features: list[bytes]) -> Path:
    """A file laid out like a shared library whose read-only data holds the fail-fast guard's messages."""
    guard = b"".join(
        b"FATAL ERROR: This binary was compiled with " + f + b" enabled, but this feature is not available "
        b"on this processor (go/sigill-fail-fast).\0" for f in features
    )
    path.write_bytes(b"\x7fELF" + bytes(200_000) + guard + bytes(100_000))  # not parsed as ELF: all read
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cpuinfo_names_the_board_and_core_and_lists_the_features(tmp_path):
    cpu = native.read_cpu(write(tmp_path / "cpuinfo", PI4_CPUINFO))
    assert cpu.name == "Raspberry Pi 4 Model B Rev 1.4, Cortex-A72"
    assert cpu.features == {"fp", "asimd", "evtstrm", "crc32", "cpuid"}


def test_a_pi4_cannot_run_an_armv82_build_and_is_told_what_to_install(tmp_path):
    library = stand_in_library(tmp_path / "libmediapipe.so", ARMV82_GUARD)
    assert native.compiled_features(library) == {f.decode() for f in ARMV82_GUARD}
    with pytest.raises(InstallError) as raised:
        native.check_cpu_runs_mediapipe(write(tmp_path / "cpuinfo", PI4_CPUINFO), "aarch64", [library])
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("Raspberry Pi 4 Model B Rev 1.4, Cortex-A72 cannot run the installed mediapipe")
    # crc is there (crc32); the ARMv8.1/8.2 extensions are not
    assert "needs aes, dotprod, fp16, lse, rcpc, rdm, sha2," in message
    assert f"mediapipe=={native.ARMV80_MEDIAPIPE}" in message and "requirements/aarch64.txt" in message
    assert raised.value.exit_code == 8


def test_a_pi5_runs_the_armv82_build_and_an_unguarded_build_runs_anywhere(tmp_path):
    armv82 = stand_in_library(tmp_path / "libmediapipe.so", ARMV82_GUARD)
    unguarded = stand_in_library(tmp_path / "_framework_bindings.so", [])  # as 0.10.18's
    native.check_cpu_runs_mediapipe(write(tmp_path / "pi5", PI5_CPUINFO), "aarch64", [armv82, unguarded])
    native.check_cpu_runs_mediapipe(write(tmp_path / "pi4", PI4_CPUINFO), "aarch64", [unguarded])


def test_the_installed_mediapipe_is_checked_against_this_machines_cpu(tmp_path):
    """The real library: its guard's list is found, this CPU has it all, a CPU without AVX does not."""
    libraries = native.mediapipe_libraries()
    assert libraries, "mediapipe is installed in the test venv"
    compiled = set().union(*(native.compiled_features(library) for library in libraries))
    if platform.machine() != "x86_64" or not compiled:
        pytest.skip(f"the installed mediapipe's guard lists {compiled or 'nothing'} on {platform.machine()}")
    assert {"sse2", "avx"} <= compiled
    native.check_cpu_runs_mediapipe()  # this machine runs it, so it must pass
    flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    no_avx = write(tmp_path / "cpuinfo", "model name\t: Old Xeon\n" + re.sub(r" avx\S*", "", flags) + "\n")
    with pytest.raises(InstallError, match=r"^Old Xeon cannot run the installed mediapipe .*needs avx"):
        native.check_cpu_runs_mediapipe(no_avx, "x86_64", libraries)


def test_the_armv80_mediapipe_named_in_messages_is_the_one_the_aarch64_lock_pins():
    pinned = re.search(r"^mediapipe==(\S+)", (REPO / "requirements" / "aarch64.txt").read_text(), re.M)
    assert pinned and pinned.group(1) == native.ARMV80_MEDIAPIPE


@pytest.mark.parametrize(
    ("message", "package"),
    [
        ("libEGL.so.1: cannot open shared object file: No such file or directory", "libegl1"),
        ("libGLESv2.so.2: cannot open shared object file: No such file or directory", "libgles2"),
        ("libGL.so.1: cannot open shared object file: No such file or directory", "libgl1"),
        ("libgthread-2.0.so.0: cannot open shared object file: No such file or directory", "libglib2.0-0"),
    ],
)
def test_a_missing_system_library_is_one_line_naming_the_debian_package(tmp_path, message, package):
    """A stand-in mediapipe whose import fails as the real one does without the library, via the CLI."""
    stand_in = tmp_path / "site" / "mediapipe"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(f"raise OSError({message!r})\n")
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "landmarks", str(REPO / "edge" / "data" / "astronaut.jpg")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])},
    )
    assert result.returncode == InstallError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"cryedge: mediapipe needs {message.split(':')[0]}, which is not installed: "
                     f"sudo apt install {package} (or ./setup.sh --runtime)"]


def package_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def test_setup_the_image_and_the_readme_install_the_packages_of_the_mapped_libraries():
    apt = package_list(REPO / "requirements" / "apt-runtime.txt")
    assert {"libegl1", "libgles2", "libgl1", "libglib2.0-0"} <= apt
    assert apt <= package_list(REPO / "image" / "stage-cryedge" / "00-packages" / "00-packages-nr")
    readme = (REPO / "README.md").read_text()
    pi_steps = readme[readme.index("## On a Raspberry Pi"):]
    apt_line = next(line for line in pi_steps.splitlines() if line.startswith("sudo apt install"))
    assert apt <= set(apt_line.split())


NOISE_AND_NEWS = """\
import os, sys
from edge import native
native.NativeLogFilter().start()
for line in (
    b"INFO: [compiled_model.cc:1093] Tracked constant output tensor (null) with locked address\\n",
    b"WARNING: [model_load.cc:402] Sparsity tensors may not yet be fully supported.\\n",
    b"W0000 00:00:1795958266.685123   4321 inference_feedback_manager.cc:121] Feedback manager ...\\n",
    b"I0000 00:00:1795958266.685123   4321 gl_context.cc:369] GL version: 3.2\\n",
    b"ERROR: failed to allocate tensors\\n",
    b"F0000 00:00:1795958266.685123   4321 calculator_graph.cc:1] Check failed: graph\\n",
):
    os.write(2, line)
print("edge.daemon: from Python", file=sys.stderr)
sys.stderr.flush()
os.abort()
"""


@pytest.mark.parametrize("grep", [True, False])
def test_native_info_and_warning_lines_are_dropped_and_last_words_survive_an_abort(tmp_path, grep):
    """Without grep on PATH (a slim container) every native line came through: the filter was grep."""
    path = os.environ["PATH"] if grep else str(tmp_path)  # an empty folder: no grep, no other program
    assert (shutil.which("grep", path=path) is not None) == grep
    result = subprocess.run([sys.executable, "-c", NOISE_AND_NEWS], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PATH": path})
    assert result.returncode == -6  # SIGABRT, as a native CHECK failure ends a process
    lines = sorted(result.stderr.splitlines())
    assert lines == sorted([
        "ERROR: failed to allocate tensors",
        "F0000 00:00:1795958266.685123   4321 calculator_graph.cc:1] Check failed: graph",
        "edge.daemon: from Python",
    ])


def count_native_lines(stderr: str) -> tuple[int, int]:
    tracked = sum("Tracked constant output tensor" in line for line in stderr.splitlines())
    glog = sum(bool(re.match(r"[IW]\d{4} ", line)) for line in stderr.splitlines())
    return tracked, glog


@pytest.mark.slow
@pytest.mark.parametrize("switch", [[], ["--native-log"]])
def test_the_demo_keeps_native_noise_off_stderr_unless_asked(tmp_path, switch):
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", *switch, "run", "--fast", "--no-health"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if k != "CRYEDGE_NATIVE_LOG"}, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"cry_start"') == 1 and result.stdout.count('"cry_end"') == 1
    tracked, glog = count_native_lines(result.stderr)
    if switch:
        # MediaPipe's W0000 lines (LiteRT's "Tracked constant" line comes with each pose run, and the
        # default model reads the face alone, so the daemon runs no pose landmarker for it)
        assert tracked + glog > 0 and glog > 0
    else:
        assert (tracked, glog) == (0, 0), result.stderr
        assert "edge.daemon: cry start" in result.stderr  # cryedge's own log lines still come through


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(), reason="needs root and unshare")
def test_a_machine_without_libegl_gets_one_line_naming_libegl1(tmp_path):
    """libEGL.so.1 really gone: an overlay whites it out of the library directory in a private mount
    namespace, so mediapipe 1.x's libmediapipe.so cannot be loaded when the landmarker is created."""
    libdir = Path("/usr/lib") / f"{platform.machine()}-linux-gnu"
    if not (libdir / "libEGL.so.1").exists():
        pytest.skip(f"no {libdir}/libEGL.so.1 to hide")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    for name in [p.name for p in libdir.glob("libEGL.so.1*")]:
        os.mknod(upper / name, 0o600 | 0o020000, os.makedev(0, 0))  # an overlay whiteout
    script = (
        f"mount -t overlay overlay -o lowerdir={libdir},upperdir={upper},workdir={work} {libdir} || exit 99; "
        f"test ! -e /lib/{libdir.name}/libEGL.so.1 || exit 98; "
        f"exec {sys.executable} -m edge.cli landmarks"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode in (98, 99):
        pytest.skip(f"cannot hide libEGL here: {result.stderr.strip()}")
    assert result.returncode == InstallError.exit_code, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cryedge: MediaPipe's landmarker needs libEGL.so.1, which is not installed: "
        "sudo apt install libegl1 (or ./setup.sh --runtime)"
    )
    assert "Traceback" not in result.stderr
