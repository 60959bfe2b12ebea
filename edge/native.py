"""What the native libraries under cryedge (MediaPipe, OpenCV, LiteRT) need from the machine.

- The CPU: MediaPipe's builds are compiled for CPU extensions (on aarch64, 1.x needs ARMv8.2's LSE
  atomics, ``ldapr``, ``sdot`` and the crypto extensions; a Pi 4, 3 or Zero 2 W has none of them) and
  die with SIGILL on a CPU without them. Each such build carries its own list, as the messages of its
  start-up guard ("This binary was compiled with lse enabled, but ..."), so that list is read from the
  installed library and compared with ``/proc/cpuinfo`` before mediapipe is imported.
- Shared libraries from the distribution (``libEGL.so.1`` and friends): a missing one becomes one
  line naming the Debian package that provides it.
- Their log lines: LiteRT and MediaPipe write INFO/WARNING lines to file descriptor 2 on every frame;
  ``NativeLogFilter`` keeps those out of the journal.
"""

from __future__ import annotations

import importlib.util
import logging
import mmap
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.errors import InstallError

log = logging.getLogger(__name__)

# The mediapipe that cryedge's aarch64 lock pins because it runs on ARMv8.0 (Pi 4, 3, Zero 2 W);
# tests/edge/test_native.py keeps it equal to requirements/aarch64.txt.
ARMV80_MEDIAPIPE = "0.10.18"

# The names MediaPipe's start-up guard uses, as the kernel spells them in /proc/cpuinfo
# ("Features" on aarch64, "flags" on x86-64). All must be present.
CPU_FEATURE_NAMES = {
    "aarch64": {
        "aes": ("aes",),
        "crc": ("crc32",),
        "dotprod": ("asimddp",),
        "fp16": ("fphp", "asimdhp"),
        "lse": ("atomics",),
        "rcpc": ("lrcpc",),
        "rdm": ("asimdrdm",),
        "sha2": ("sha2",),
        "sha3": ("sha3",),
        "sve": ("sve",),
        "i8mm": ("i8mm",),
        "bf16": ("bf16",),
    },
    "x86_64": {
        "aes": ("aes",),
        "avx": ("avx",),
        "avx2": ("avx2",),
        "avx512f": ("avx512f",),
        "bmi": ("bmi1",),
        "bmi2": ("bmi2",),
        "cmpxchg16b": ("cx16",),
        "f16c": ("f16c",),
        "fma": ("fma",),
        "mmx": ("mmx",),
        "pclmul": ("pclmulqdq",),
        "popcnt": ("popcnt",),
        "sse": ("sse",),
        "sse2": ("sse2",),
        "sse3": ("pni",),
        "ssse3": ("ssse3",),
        "sse4.1": ("sse4_1",),
        "sse4.2": ("sse4_2",),
    },
}

# Arm's part numbers of the cores Raspberry Pis use (/proc/cpuinfo "CPU part", implementer 0x41).
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}

_GUARD = re.compile(rb"This binary was compiled with ([\w.]+) enabled")


@dataclass(frozen=True)
class Cpu:
    """What /proc/cpuinfo says: a name for messages and the feature flags."""

    name: str
    features: frozenset[str]


def read_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> Cpu:
    """The CPU's name (the board model, the core) and its feature flags, from a cpuinfo file."""
    fields: dict[str, str] = {}
    for line in Path(cpuinfo).read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    features = frozenset((fields.get("Features") or fields.get("flags") or "").split())
    core = ARM_CORES.get(fields.get("CPU part", "").lower()) if fields.get("CPU implementer") == "0x41" else None
    names = [fields.get("Model"), core or fields.get("model name")]
    return Cpu(name=", ".join(n for n in names if n) or "this CPU", features=features)


def _rodata_ranges(data) -> list[tuple[int, int]]:
    """(offset, size) of a 64-bit little-endian ELF file's ``.rodata*`` sections; [] if it is not one."""
    if data[:6] != b"\x7fELF\x02\x01":
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shentsize < 64 or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return []
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = sections[shstrndx][4]
    ranges = []
    for name, _type, _flags, _addr, offset, size in sections:
        start = names_offset + name
        if data[start : start + 7] == b".rodata" and offset + size <= len(data):
            ranges.append((offset, size))
    return ranges


def compiled_features(library: Path) -> frozenset[str]:
    """The CPU extensions a MediaPipe library checks for at start (its fail-fast guard's list).

    Only the read-only data sections are read (1.4 of 22 MB for 0.10.18's aarch64 bindings, 6.6 of
    124 MB for 1.2.3's libmediapipe.so), which matters on a Pi's SD card.
    """
    with open(library, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return frozenset()
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found: set[str] = set()
            for offset, size in _rodata_ranges(data) or [(0, len(data))]:
                found.update(name.decode() for name in _GUARD.findall(data, offset, offset + size))
    return frozenset(found)


def missing_features(compiled: frozenset[str], cpu: Cpu, machine: str) -> list[str]:
    """The compiled-for extensions this CPU lacks, in the guard's names; unknown names are not judged."""
    names = CPU_FEATURE_NAMES.get(machine, {})
    return sorted(f for f in compiled if f in names and not all(flag in cpu.features for flag in names[f]))


def mediapipe_libraries() -> list[Path]:
    """The installed mediapipe's big native libraries, found without importing it."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    candidates = [root / "tasks" / "c" / "libmediapipe.so", *sorted((root / "python").glob("_framework_bindings*.so"))]
    return [path for path in candidates if path.is_file()]


def installed_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def check_cpu_runs_mediapipe(cpuinfo: Path = Path("/proc/cpuinfo"), machine: str | None = None,
                             libraries: list[Path] | None = None) -> None:
    """Raise InstallError, one line, when the installed mediapipe would die of SIGILL on this CPU."""
    machine = machine or platform.machine()
    if machine not in CPU_FEATURE_NAMES:
        return
    try:
        cpu = read_cpu(cpuinfo)
    except OSError as error:
        log.debug("cannot read %s (%s): CPU features not checked", cpuinfo, error)
        return
    for library in mediapipe_libraries() if libraries is None else libraries:
        try:
            compiled = compiled_features(library)
        except (OSError, ValueError) as error:
            log.debug("cannot read %s (%s): CPU features not checked", library, error)
            continue
        missing = missing_features(compiled, cpu, machine)
        if not missing:
            continue
        advice = (
            f"install the ARMv8.0 build: ./setup.sh --runtime, or pip install --require-hashes -r "
            f"requirements/aarch64.txt (mediapipe=={ARMV80_MEDIAPIPE})"
            if machine == "aarch64" else "install a mediapipe built for this CPU"
        )
        flags = ", ".join(missing)
        raise InstallError(
            f"{cpu.name} cannot run the installed mediapipe {installed_version('mediapipe')} "
            f"({library.name} needs {flags}, which this CPU lacks): {advice}"
        )


# Shared libraries that the wheels expect from the distribution, and the Debian packages holding them
# (`ldd` on libmediapipe.so and cv2's extension and its bundled Qt). setup.sh --runtime installs these.
LIBRARY_PACKAGES = {
    "libEGL.so.1": "libegl1",
    "libGLESv2.so.2": "libgles2",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libX11.so.6": "libx11-6",
    "libXext.so.6": "libxext6",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libxcb.so.1": "libxcb1",
    "libz.so.1": "zlib1g",
}
_MISSING_LIBRARY = re.compile(r"([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file")


def missing_library_error(error: BaseException, what: str) -> InstallError | None:
    """An InstallError naming the Debian package when ``error`` is a shared library not found; else None."""
    match = _MISSING_LIBRARY.search(str(error))
    if not match:
        return None
    library = match.group(1)
    package = LIBRARY_PACKAGES.get(library)
    fix = f"sudo apt install {package}" if package else f"install the package that provides {library}"
    return InstallError(f"{what} needs {library}, which is not installed: {fix} (or ./setup.sh --runtime)")


# Lines the native libraries write to fd 2 that are not for a service's journal: TFLite/LiteRT's
# minimal logger ("INFO: ...", "WARNING: ...", "VERBOSE: ..."), glog/absl INFO and WARNING lines
# ("W0000 00:00:1732871234.123456   123 file.cc:121] ...") and OpenCV's ("[ WARN:0@3.056] global cap_v4l.cpp:915
# ...", at each reopen of a camera that is away). ERROR and FATAL lines pass.
NATIVE_NOISE = r"^(INFO|WARNING|VERBOSE): |^[IW][0-9]{4} [0-9:.]+ +[0-9]+ [^ ]+:[0-9]+\] |^\[ ?(WARN|INFO):[0-9]+@[0-9.]+\] "


# The same filter in this Python, for a machine without grep (a slim container): about 9 MB of memory
# against grep's 2 (maxrss), so grep is used when it is there. It ignores SIGINT, like the end of its
# pipe, so that a Ctrl-C still lets it drain what the process writes while it stops.
_PYTHON_FILTER = """\
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
noise, out = re.compile(sys.argv[1].encode()), sys.stdout.buffer
for line in sys.stdin.buffer:
    if not noise.search(line):
        out.write(line)
        out.flush()
"""


def filter_command(pattern: str) -> list[str]:
    """The process that drops lines matching ``pattern`` from its input: grep, else this Python."""
    if shutil.which("grep"):
        return ["grep", "--line-buffered", "-v", "-E", pattern]
    return [sys.executable, "-I", "-S", "-c", _PYTHON_FILTER, pattern]


class NativeLogFilter:
    """Routes file descriptor 2 through ``grep -v`` so native INFO/WARNING lines stay out of the journal.

    Python's own stderr keeps the original descriptor (journald still recognizes it), so only what
    C/C++ code writes to fd 2 is filtered. grep runs as its own process: if a native library aborts
    the process, grep still drains the pipe and its last words (a FATAL line) reach the journal.
    Only the real process stderr is redirected; under a test harness that replaced ``sys.stderr``,
    nothing happens.
    """

    def __init__(self, pattern: str = NATIVE_NOISE):
        self.pattern = pattern
        self._saved_fd: int | None = None
        self._grep: subprocess.Popen | None = None
        self._stream = None

    def start(self) -> NativeLogFilter:
        if sys.stderr is not sys.__stderr__ or sys.stderr is None:
            return self
        try:
            if sys.stderr.fileno() != 2:
                return self
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            return self
        read_end, write_end = os.pipe()
        try:
            grep = subprocess.Popen(
                filter_command(self.pattern),
                stdin=read_end, stdout=saved, stderr=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as error:
            for fd in (read_end, write_end, saved):
                os.close(fd)
            log.debug("native log lines not filtered: %s", error)
            return self
        os.close(read_end)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._saved_fd, self._grep = saved, grep
        # Python writes to the original stderr, unfiltered and in order with the logging handler
        self._stream = open(saved, "w", buffering=1, encoding=sys.__stderr__.encoding,
                            errors="backslashreplace", closefd=False)
        sys.stderr = self._stream
        return self

    def close(self) -> None:
        if self._saved_fd is None:
            return
        self._stream.flush()
        sys.stderr = sys.__stderr__
        for handler in logging.getLogger().handlers:  # logging set up while filtering writes on
            if getattr(handler, "stream", None) is self._stream:
                handler.setStream(sys.__stderr__)
        os.dup2(self._saved_fd, 2)  # closes the pipe's last write end: grep drains it and exits
        try:
            self._grep.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._grep.kill()
            self._grep.wait()
        self._stream.close()
        os.close(self._saved_fd)
        self._saved_fd = self._grep = self._stream = None

    def __enter__(self) -> NativeLogFilter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
