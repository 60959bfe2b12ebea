"""Run a command under the unit's process restrictions without systemd as PID 1.

This container has no systemd init, so ``systemd-run -p ...`` cannot apply the unit. What matters for
whether cryedge still works is what the kernel refuses, and three of the unit's settings are plain
process attributes that an unprivileged helper can apply the same way systemd does before ``exec``:

- ``SystemCallFilter=`` (+ ``SystemCallErrorNumber=``, ``SystemCallArchitectures=native``): a seccomp
  filter built with libseccomp, as systemd builds it, from the groups as ``systemd-analyze
  syscall-filter`` lists them (allow-list first, then ``~`` entries removed from it);
- ``MemoryDenyWriteExecute=yes``: the kernel's ``PR_SET_MDWE`` (``PR_MDWE_REFUSE_EXEC_GAIN``), which
  refuses writable+executable mappings and making a mapping executable, the same rule systemd 252
  enforces with seccomp (newer systemd uses ``PR_SET_MDWE`` itself);
- ``NoNewPrivileges=yes``: ``PR_SET_NO_NEW_PRIVS``.

Usage: ``python sandbox.py UNIT_FILE -- COMMAND...``. The mount, device and user settings are not
applied here; they are checked by ``systemd-analyze`` and by reading the installed tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of the [Service] section, a list per key (repeated keys accumulate)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def expand(name: str, seen: set[str] | None = None) -> set[str]:
    """System call names in a ``@group`` (recursively) or the name itself."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= expand(item, seen)
    return names


def allowed_syscalls(filters: list[str]) -> set[str]:
    """systemd's reading of several ``SystemCallFilter=`` lines: an allow-list, then ``~`` removals."""
    allowed: set[str] = set()
    for value in filters:
        deny = value.startswith("~")
        names = set().union(*(expand(item) for item in value.lstrip("~").split()))
        if deny:
            allowed -= names
        else:
            allowed |= names
    return allowed


def apply(unit: Path) -> None:
    settings = unit_settings(unit)
    libc = ctypes.CDLL(None, use_errno=True)
    no_new_privileges = settings.get("NoNewPrivileges", ["no"])[-1] == "yes"
    if no_new_privileges and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    deny_write_execute = settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    if deny_write_execute and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (needs Linux 6.3 or later)")
    filters = settings.get("SystemCallFilter", [])
    if filters:
        number = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
        seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        seccomp.seccomp_init.restype = ctypes.c_void_p
        seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
        seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
        context = seccomp.seccomp_init(0x00050000 | getattr(errno, number))  # SCMP_ACT_ERRNO(number)
        for name in sorted(allowed_syscalls(filters)):
            number_of = seccomp.seccomp_syscall_resolve_name(name.encode())
            if number_of >= 0:  # names of other architectures resolve to __NR_SCMP_ERROR
                seccomp.seccomp_rule_add(context, SCMP_ACT_ALLOW, number_of, 0)
        if seccomp.seccomp_load(context) != 0:
            raise OSError(ctypes.get_errno(), "seccomp_load")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    unit, command = Path(argv[1]), argv[split + 1 :]
    apply(unit)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
