"""Whether a venv still holds what the lock file it was installed from pins, and putting it back.

``setup.sh`` and ``systemd/install.sh`` install a lock file's exact versions (``requirements/``), then run
``python -m edge.installed --lock LOCK --again COMMAND`` in the venv, which:

- uninstalls what an earlier lock pinned and this one does not (``pip install -r`` adds and moves, it never
  removes: a package a new lock dropped stayed, at its old version, for ever);
- uninstalls a distribution no lock pins that owns a module of a pinned one (``pip install opencv-python``
  writes its own ``cv2`` over opencv-contrib-python's, and pip, seeing the pinned version installed, left
  it there), and reinstalls the pinned owner from the lock;
- installs again from the lock a pinned distribution some of whose files are missing or cut short (a half-finished
  pip, a damaged card): pip, seeing its metadata, took it as installed;
- records the lock in the venv (``RECORD_NAME``) with the command that installs it again.

``python -m edge.installed --damaged cryedge`` says whether cryedge itself has files missing or cut short: install.sh
then installs it again, which pip, given a wheel of the version installed, did not.

``cryedge run`` compares the venv with that record (:func:`drift`) and says in one line what changed since:
a pinned package at another version (``pip install`` of something else moved numpy, which apt's picamera2
is built against) or missing, a distribution over a pinned one's module, or, in a checkout, a lock that
changed (``git pull``) without the install being run again; and a model file installed with cryedge
whose bytes differ from pip's record of them (:func:`check_installed_file`). Standard library only (and
``edge.errors``): it runs in a venv before anything else is installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge.errors import ModelError

log = logging.getLogger(__name__)

RECORD_NAME = "cryedge-lock.txt"  # in the venv (sys.prefix)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", re.MULTILINE)
# not pinned by a lock, and not a stranger: the installer itself and cryedge
OWN = {"pip", "cryedge"}
# never taken out when a lock stops pinning them: the venv's own installer and cryedge's build backend
KEPT = OWN | {"setuptools", "wheel"}
# The Python every lock file in requirements/ is resolved for (refresh.sh's --python-version): Bookworm's
LOCKS_PYTHON = "3.11"
# The locks that hold no wheel of some pin for any other Python (pip download --only-binary=:all:, 2026-11-30): the
# Pi's (mediapipe 0.10.18 and numpy 1.26.4 have none for Trixie's 3.13) and tflite-runtime 2.14's (cp38 to cp311).
# x86_64.txt has every wheel for 3.13 too: not refused (nor tested there).
ONE_PYTHON_LOCKS = {"aarch64.txt", "tflite-runtime.txt"}


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares them (``Opencv_Contrib.Python`` is ``opencv-contrib-python``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock_text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a lock file."""
    return {canonical(name): version for name, version in _PIN.findall(lock_text)}


def lock_entries(lock_text: str, names: set[str]) -> str:
    """The lock's entries (``name==version`` with its ``--hash`` lines) of ``names``, as a lock file of its own."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", lock_text)
    return "\n".join(block for block in blocks if (m := _PIN.match(block)) and canonical(m.group(1)) in names) + "\n"


@dataclass(frozen=True)
class Record:
    """What a venv was installed from: the lock's name, the command that installs it again, the lock's text, and
    the paths that command reads (the install script, a wheel, a lock or a Python given to it)."""

    lock: str
    again: str
    text: str
    needs: tuple[str, ...] = ()

    @classmethod
    def read(cls, prefix: Path) -> Record | None:
        try:
            text = (prefix / RECORD_NAME).read_text()
        except (OSError, UnicodeDecodeError):
            return None
        fields = dict(re.findall(r"^# (lock|again): (.*)$", text, re.MULTILINE))
        needs = tuple(re.findall(r"^# needs: (.*)$", text, re.MULTILINE))
        return cls(fields.get("lock", "its lock file"), fields.get("again", "the install"), text, needs)

    def write(self, prefix: Path) -> None:
        header = (f"# cryedge: this venv was installed from this lock; `cryedge run` compares it with the venv\n"
                  f"# lock: {self.lock}\n# again: {self.again}\n" + "".join(f"# needs: {p}\n" for p in self.needs))
        (prefix / RECORD_NAME).write_text(header + self.text)

    def repair(self) -> str:
        """The command that installs this venv again, and, when what it reads is gone (a wheel in /tmp, the copy of a
        checkout an image was built from), that it is: the command alone would fail, or install something else."""
        gone = [path for path in self.needs if _gone(path)]
        if not gone:
            return self.again
        return (f"{self.again} (but {', '.join(gone)} {'is' if len(gone) == 1 else 'are'} no longer there: put "
                f"{'it' if len(gone) == 1 else 'them'} back, or run a cryedge checkout's systemd/install.sh with "
                f"those options, --package a cryedge wheel in place of one that is gone)")


def _gone(path: str) -> bool:
    """Whether ``path`` is not there; not when this user may not look (the service's user in a 0700 home)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _owned_modules(distribution: metadata.Distribution) -> set[str]:
    """The top-level modules and regular packages a distribution's files make (namespace packages are shared)."""
    owned = set()
    for path in distribution.files or ():
        parts = path.parts
        if len(parts) == 2 and parts[1] == "__init__.py":
            owned.add(parts[0])
        elif len(parts) == 1 and path.suffix in (".py", ".so", ".pyd") and not parts[0].startswith("__"):
            owned.add(parts[0].split(".")[0])
    return owned


def _venv_distributions(prefix: Path) -> dict[str, metadata.Distribution]:
    """name -> distribution of those installed in the venv itself (not apt's, seen through system site packages)."""
    found: dict[str, metadata.Distribution] = {}
    for site in sorted(prefix.glob("lib/python*/site-packages")):
        for distribution in metadata.distributions(path=[str(site)]):
            found.setdefault(canonical(distribution.metadata["Name"] or ""), distribution)
    return found


def strangers(pins: dict[str, str], prefix: Path) -> dict[str, tuple[str, set[str]]]:
    """Distributions no lock pins that own a module of a pinned one: name -> (pinned owner, the modules)."""
    installed = _venv_distributions(prefix)
    others = {name: _owned_modules(d) for name, d in installed.items() if name not in pins and name not in OWN}
    others = {name: modules for name, modules in others.items() if modules}
    if not others:
        return {}
    owners = {module: name for name, d in installed.items() if name in pins for module in _owned_modules(d)}
    found = {}
    for name, modules in others.items():
        shared = {module for module in modules if module in owners}
        if shared:
            found[name] = (owners[min(shared)], shared)
    return found


def missing_or_cut_short(distribution: metadata.Distribution) -> int:
    """How many files of a distribution's RECORD are missing, or of another size than RECORD gives.

    Files outside the venv's site-packages (``bin/`` scripts, which install.sh --root rewrites) are only checked for
    being there, and compiled ``.pyc`` not at all: Python and install.sh's compileall write them again, also those a
    wheel ships with their size in RECORD (numpy 1.26's ``conv_template.cpython-311.pyc``)."""
    count = 0
    for entry in distribution.files or ():
        outside = entry.parts[0] == ".."
        if (entry.size is None or entry.suffix == ".pyc") and not outside:
            continue
        try:
            size: int | None = Path(entry.locate()).stat().st_size
        except OSError:
            size = None
        if size is None or (not outside and size != entry.size):
            count += 1
    return count


def damaged(pins: dict[str, str], prefix: Path) -> dict[str, int]:
    """Pinned distributions in the venv with files of their RECORD missing or cut short: name -> how many.

    pip takes a distribution whose metadata is there as installed, so ``pip install -r lock`` left a half-finished
    one (power cut, full card) as it was. ~1 s for 33,000 files."""
    found = {}
    for name, distribution in _venv_distributions(prefix).items():
        if name in pins and (count := missing_or_cut_short(distribution)):
            found[name] = count
    return found


def why_damaged(name: str, prefix: Path | None = None) -> str | None:
    """Why the distribution ``name`` in the venv at ``prefix`` (this one) needs installing again, or None (also when
    it is not installed). install.sh asks it of cryedge itself: pip takes a wheel, or ``cryedge==X`` from an index,
    of the version installed as installed, and left cryedge's own missing files missing."""
    distribution = _venv_distributions(Path(sys.prefix) if prefix is None else prefix).get(canonical(name))
    count = missing_or_cut_short(distribution) if distribution is not None else 0
    return _damage(count) if count else None


def _damage(count: int) -> str:
    return f"{count} of its files are missing or cut short (a half-finished pip, a damaged card?)"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Drift:
    """How a venv differs from the lock it was installed from."""

    record: Record
    changes: tuple[str, ...]

    def line(self) -> str:
        return (f"this install no longer matches {self.record.lock}, which it was installed from: "
                f"{'; '.join(self.changes)}. Run {self.record.repair()} again to put it back")


def drift(prefix: Path | None = None, checkout: Path | None = None) -> Drift | None:
    """How the venv at ``prefix`` (this one) differs from its record; None when it does not, or has no record.

    ``checkout``: the source tree cryedge runs from (an editable install), whose lock may have changed since."""
    prefix = Path(sys.prefix) if prefix is None else prefix
    record = Record.read(prefix)
    if record is None:
        return None
    pins = pinned(record.text)
    changes = []
    for name, version in pins.items():
        installed = _version(name)
        if installed is None:
            changes.append(f"{name} is not installed (the lock: {version})")
        elif installed != version:
            changes.append(f"{name} {installed} is installed (the lock: {version})")
    for name, (owner, modules) in sorted(strangers(pins, prefix).items()):
        version = _version(name) or "?"
        changes.append(f"{name} {version}, which no lock pins, wrote over {owner}'s {', '.join(sorted(modules))}")
    if checkout is not None:
        try:
            now = pinned((checkout / record.lock).read_text())
        except OSError:
            now = pins
        if now != pins:
            changes.append(f"{record.lock} has changed since")
    return Drift(record, tuple(changes)) if changes else None


def checkout_of_this_code() -> Path | None:
    """The source tree edge runs from when that is a checkout (setup.sh's editable install), else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "requirements").is_dir() and (root / "pyproject.toml").is_file() else None


def warn_if_drifted() -> None:
    """One warning line when this venv differs from the lock it was installed from; never raises."""
    try:
        found = drift(checkout=checkout_of_this_code())
    except Exception as error:  # a check, not a reason to stop a baby monitor
        log.debug("install not compared with its lock: %s", error, exc_info=True)
        return
    if found is not None:
        log.warning("%s", found.line())


def installed_digest(path: Path, distribution: str = "cryedge") -> str | None:
    """The sha256 (urlsafe base64, as RECORD writes it) pip recorded for ``path`` when it installed
    ``distribution``; None when it did not (an editable install, a file of the user's)."""
    try:
        entries = metadata.files(distribution) or ()
    except metadata.PackageNotFoundError:
        return None
    resolved = Path(path).resolve()
    for entry in entries:
        if entry.name == resolved.name and entry.hash is not None and entry.hash.mode == "sha256" \
                and Path(entry.locate()).resolve() == resolved:
            return entry.hash.value
    return None


def check_installed_file(path: Path, what: str) -> None:
    """ModelError, one line, when a file pip installed with cryedge (the default models) differs from its RECORD.

    A few KiB of an SD card's damage in a model's weights loads without an error and scores wrong all night."""
    expected = installed_digest(path)
    if expected is None:
        return
    digest = hashlib.sha256(Path(path).read_bytes()).digest()
    if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != expected:
        record = Record.read(Path(sys.prefix))
        again = record.repair() if record else "pip install --force-reinstall --no-deps cryedge"
        raise ModelError(f"{what} {path} is not the file installed with cryedge (its sha256 differs from the one pip "
                         f"recorded): damaged on disk; install cryedge again ({again})")


def broken_import_line(error: ImportError | SyntaxError) -> str:
    """One line for a module of cryedge or of a dependency that does not import, with the command that installs
    this venv again (its record), for ``cryedge`` to exit with InstallError's code.

    A half-finished pip or a damaged card leaves a package without some of its files, or one cut short (which does
    not parse): the import fails the same way at every start, so a restart never helps, and the traceback said
    nothing of the repair."""
    record = Record.read(Path(sys.prefix))
    again = record.repair() if record else "./setup.sh (or sudo systemd/install.sh for the service)"
    if isinstance(error, SyntaxError):  # its str names the file without its folder
        what = f"{error.filename} does not parse (line {error.lineno}: {error.msg})"
    else:
        what = (str(error).splitlines() or [""])[0]
    return (f"this install is incomplete or damaged: {type(error).__name__}: {what} (a half-finished pip, a damaged "
            f"card?); install it again: {again}")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def sync(lock: Path, name: str, again: str, prefix: Path | None = None, pip_args: tuple[str, ...] = (),
         needs: tuple[str, ...] = ()) -> list[str]:
    """After ``pip install --require-hashes -r lock``: the stale and the strangers out, their pinned owners and the
    damaged reinstalled, the record written. Returns what it said."""
    prefix = Path(sys.prefix) if prefix is None else prefix
    text = lock.read_text()
    pins = pinned(text)
    said = []
    before = Record.read(prefix)
    installed = _venv_distributions(prefix)
    stale = sorted(n for n in (pinned(before.text) if before else {}) if n not in pins and n in installed
                   and n not in KEPT)
    found = strangers(pins, prefix)
    if stale:
        said.append(f"removing what {before.lock} pinned and {name} does not: {', '.join(stale)}")
    for stranger, (owner, modules) in sorted(found.items()):
        said.append(f"removing {stranger}, which no lock pins: it wrote over {owner}'s {', '.join(sorted(modules))}")
    # a stranger's files over a pinned one's count as damage too: said once, as the stranger's
    overwritten = {owner for owner, _ in found.values()}
    broken = {n: count for n, count in damaged(pins, prefix).items() if n not in overwritten}
    for distribution, count in sorted(broken.items()):
        said.append(f"installing {distribution} again from {name}: {_damage(count)}")
    for line in said:
        print(f"install: {line}", file=sys.stderr)
    if stale or found:
        _pip("uninstall", "--yes", "--quiet", *stale, *sorted(found))
    # the strangers' owners (their files went with the stranger's: the same paths) and the damaged: the lock's own
    owners = overwritten | set(broken)
    if owners:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as entries:
            entries.write(lock_entries(text, owners))
            entries.flush()
            _pip("install", "--quiet", "--no-deps", "--force-reinstall", "--require-hashes", *pip_args,
                 "-r", entries.name)
    Record(name, again, text, needs).write(prefix)
    return said


def made_by_another_python(venv: Path) -> str | None:
    """Why the venv at ``venv`` cannot be used with this Python, or None (also when there is no venv).

    An OS upgrade that moves Python's minor version (Bookworm's 3.11 to Trixie's 3.13) leaves a venv whose
    bin/python links to an interpreter that is gone, or that is now another minor version, whose
    site-packages (lib/python3.11) it no longer reads: cryedge fails before any of its code runs, and systemd
    restarts it for ever. setup.sh and install.sh run this with the Python they would make the venv with."""
    config, python = venv / "pyvenv.cfg", venv / "bin" / "python"
    if not (config.exists() or python.exists() or python.is_symlink()):
        return None
    try:
        found = re.search(r"^version(?:_info)? *= *([0-9]+\.[0-9]+)", config.read_text(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        found = None
    made, now = found.group(1) if found else None, f"{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(python, os.X_OK):
        return f"its bin/python does not run ({f'Python {made}, ' if made else ''}gone)"
    if made is not None and made != now:
        return f"it was made by Python {made}, this is Python {now}"
    return None


def not_the_locks_python(lock: str, instead: str) -> str | None:
    """Why this Python cannot install ``lock`` (one of requirements/), ending in ``instead`` (what to do, where
    ``{python}`` is the Python to give), or None when it can (or may: a lock not in ONE_PYTHON_LOCKS).

    Raspberry Pi OS Trixie's python3 is 3.13, for which the Pi's lock has no wheel of mediapipe 0.10.18 and numpy
    1.26.4 (requirements/README.md): pip printed its resolver's "no matching distribution", or sat silent for minutes
    building numpy 1.26.4 from its source, after setup.sh had installed apt packages and install.sh had made the
    venv again."""
    now = f"{sys.version_info.major}.{sys.version_info.minor}"
    if now == LOCKS_PYTHON or Path(lock).name not in ONE_PYTHON_LOCKS:
        return None
    return (f"{sys.executable} is Python {now}, and {lock} has wheels for Python {LOCKS_PYTHON} only, Debian and "
            f"Raspberry Pi OS Bookworm's, which cryedge supports (requirements/README.md says why): install on Bookworm "
            f"(a Pi: Raspberry Pi OS (Legacy) in Raspberry Pi Imager) or give a Python {LOCKS_PYTHON}: "
            f"{instead.format(python=f'python{LOCKS_PYTHON}')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.installed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, help="the lock file just installed")
    parser.add_argument("--name", help="the lock as the record names it (default: --lock as given)")
    parser.add_argument("--again", help="the command that installs it again, for messages")
    parser.add_argument("--pip-arg", action="append", default=[], help="for pip install (repeatable)")
    parser.add_argument("--needs", action="append", default=[], metavar="PATH",
                        help="a path --again reads (repeatable): the repair line says when it is gone")
    parser.add_argument("--made-by-another-python", type=Path, metavar="VENV",
                        help="only say why VENV cannot be used with this Python (exit 0), or nothing (exit 1)")
    parser.add_argument("--damaged", metavar="NAME",
                        help="only say why this venv's NAME needs installing again (exit 0), or nothing (exit 1)")
    parser.add_argument("--not-the-locks-python", metavar="LOCK",
                        help="only say why this Python cannot install LOCK (exit 0), or nothing (exit 1)")
    parser.add_argument("--instead", default="", help="with --not-the-locks-python: what to do ({python}: a Python "
                        "the locks are for)")
    args = parser.parse_args(argv)
    if args.not_the_locks_python is not None:
        why = not_the_locks_python(args.not_the_locks_python, args.instead)
        if why is not None:
            print(why)
        return 0 if why is not None else 1
    if args.damaged is not None:
        why = why_damaged(args.damaged)
        if why is not None:
            print(why)
        return 0 if why is not None else 1
    if args.made_by_another_python is not None:
        why = made_by_another_python(args.made_by_another_python)
        if why is not None:
            print(why)
        return 0 if why is not None else 1
    if args.lock is None or args.again is None:
        parser.error("--lock and --again are needed")
    try:
        sync(args.lock, args.name or str(args.lock), args.again, pip_args=tuple(args.pip_arg),
             needs=tuple(args.needs))
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"install: cannot bring the venv to {args.lock}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
