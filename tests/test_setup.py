"""setup.sh and the lock files in requirements/: what every install (setup.sh, .ci/run, install.sh, the
image) gets, and the venv that sees apt's picamera2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
# lock file -> (platform_machine, extras of pyproject.toml it must satisfy)
PLATFORM_LOCKS = {
    "x86_64-dev.txt": ("x86_64", ("convert", "dev")),
    "x86_64.txt": ("x86_64", ()),
    "aarch64.txt": ("aarch64", ()),
}


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text()):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            pins[canonicalize_name(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def setup_function(script: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` in bash after sourcing setup.sh's functions (its main part does not run)."""
    return subprocess.run(
        ["bash", "-c", f'source "{REPO / "setup.sh"}"; {script}'],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "CRYEDGE_SETUP_FUNCTIONS_ONLY": "1", **env},
    )


@pytest.mark.parametrize("lock", [*PLATFORM_LOCKS, "tflite-runtime.txt"])
def test_every_pin_is_exact_and_hashed(lock):
    pins = read_lock(LOCKS / lock)
    assert pins
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes]
    assert unhashed == []


@pytest.mark.parametrize("lock", PLATFORM_LOCKS)
def test_each_lock_holds_every_dependency_of_pyproject_in_its_range(lock):
    """A dependency added to pyproject.toml without `requirements/refresh.sh` fails here, not on a Pi."""
    machine, extras = PLATFORM_LOCKS[lock]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(text) for text in project["optional-dependencies"][extra]]
    pins = read_lock(LOCKS / lock)
    environment = {"platform_machine": machine, "sys_platform": "linux", "python_version": "3.11",
                   "python_full_version": "3.11.2", "platform_system": "Linux", "extra": ""}
    wrong = []
    for requirement in wanted:
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None or not requirement.specifier.contains(pinned[0], prereleases=True):
            wrong.append(f"{requirement} (lock: {pinned[0] if pinned else 'missing'})")
    assert wrong == [], f"run requirements/refresh.sh: {lock} does not satisfy {wrong}"


def test_the_pi_lock_has_what_runs_on_armv8_0_and_shares_numpy_with_apt():
    pins = read_lock(LOCKS / "aarch64.txt")
    assert pins["mediapipe"][0].startswith("0.10.")
    assert pins["numpy"][0].startswith("1.")  # apt's picamera2/simplejpeg are built against 1.24
    assert int(pins["setuptools"][0].split(".")[0]) >= 77  # builds the SPDX license offline


@pytest.mark.parametrize(
    ("machine", "runtime", "expected"),
    [("x86_64", 0, "requirements/x86_64-dev.txt"), ("x86_64", 1, "requirements/x86_64.txt"),
     ("aarch64", 1, "requirements/aarch64.txt")],
)
def test_setup_picks_the_lock_of_the_machine(machine, runtime, expected):
    result = setup_function(f"lock_file {machine} {runtime}")
    assert result.returncode == 0 and result.stdout.strip() == expected, result.stderr


@pytest.mark.parametrize(("machine", "runtime"), [("aarch64", 0), ("armv7l", 1)])
def test_setup_refuses_a_machine_without_a_lock(machine, runtime):
    result = setup_function(f"lock_file {machine} {runtime}")
    assert result.returncode != 0
    assert result.stderr.startswith(f"setup.sh: error: no requirements/{machine}") and result.stderr.count("\n") == 1


@pytest.fixture
def venv(tmp_path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def sees_system_site_packages(venv: Path) -> bool:
    probe = "import site, sys; print(any(p in sys.path for p in site.getsitepackages([sys.base_prefix])))"
    return subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip() == "True"


def test_a_venv_made_before_picamera2_was_installed_is_repaired_to_see_it(tmp_path, venv):
    apt = tmp_path / "dist-packages"  # stands in for /usr/lib/python3/dist-packages
    apt.mkdir()
    script = f'make_venv "{venv}" "{sys.executable}"'
    assert setup_function(script, APT_DIST_PACKAGES=str(apt)).returncode == 0
    assert not sees_system_site_packages(venv)  # no picamera2: the venv stays isolated
    (apt / "picamera2").mkdir()  # `apt install python3-picamera2` afterwards
    result = setup_function(script, APT_DIST_PACKAGES=str(apt))
    assert result.returncode == 0, result.stderr
    assert "now sees apt's packages" in result.stderr
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert sees_system_site_packages(venv)
    # again: nothing to repair, nothing said
    assert setup_function(script, APT_DIST_PACKAGES=str(apt)).stderr == ""


def test_a_new_venv_sees_apt_when_picamera2_is_there(tmp_path):
    apt = tmp_path / "dist-packages"
    (apt / "picamera2").mkdir(parents=True)
    venv = tmp_path / "venv"
    result = setup_function(f'make_venv "{venv}" "{sys.executable}"', APT_DIST_PACKAGES=str(apt))
    assert result.returncode == 0, result.stderr
    assert sees_system_site_packages(venv)


# ----------------------------------------------------------------------------- a venv an OS upgrade left behind
# Bookworm (Python 3.11) to Trixie (3.13): the venv's bin/python links to an interpreter that is gone, or that is
# now another minor version, which does not read the venv's lib/python3.11/site-packages. The cryedge script fails
# before any of cryedge runs, and setup.sh / install.sh run again kept the venv because bin/python was there.

NOW = f"{sys.version_info[0]}.{sys.version_info[1]}"
OLD = f"3.{sys.version_info[1] - 2}"  # the minor version the venv was made by, whose interpreter is gone


def another_python() -> Path | None:
    """An interpreter of another minor version on this machine (pyenv's), or None."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    minors = {int(p.parent.parent.name.split(".")[1]): p for p in versions.glob("3.*.*/bin/python3")
              if p.parent.parent.name.split(".")[1].isdigit()}
    others = [minor for minor in minors if minor >= 9 and minor != sys.version_info[1]]
    return minors[max(others)] if others else None  # the newest: an upgrade's


def left_by_an_upgrade(venv: Path) -> Path:
    """What an OS upgrade leaves of a venv made by Python OLD: pyvenv.cfg says OLD, bin/python and its siblings
    link to /usr/bin/python{OLD} (gone), its packages are in lib/python{OLD}. Made here by this Python, then edited."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    cfg = venv / "pyvenv.cfg"
    cfg.write_text(re.sub(r"(?m)^version( = |_info = )\S+", f"version = {OLD}.2", cfg.read_text()))
    for link in (venv / "bin").glob("python*"):
        link.unlink()
        link.symlink_to(f"/usr/bin/python{OLD}")
    assert not Path(f"/usr/bin/python{OLD}").exists()
    (venv / "lib" / f"python{NOW}").rename(venv / "lib" / f"python{OLD}")
    (venv / "lib" / f"python{OLD}" / "site-packages" / "cryedge_old.py").write_text("")
    return venv


def venv_version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin/python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_setup_makes_again_a_venv_an_os_upgrade_left_with_a_python_that_is_gone(tmp_path):
    """The venv's python links dangle (its Python was upgraded away): setup.sh said nothing and ran pip with it
    (`.venv/bin/python: No such file or directory`), or made a venv over it that kept the dangling links. Now it
    says so in one line and makes it again, seeing apt's picamera2 as before, and a second run says nothing."""
    venv = left_by_an_upgrade(tmp_path / "venv")
    apt = tmp_path / "dist-packages"
    (apt / "picamera2").mkdir(parents=True)
    script = f'make_venv "{venv}" "{sys.executable}"'
    result = setup_function(script, APT_DIST_PACKAGES=str(apt))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"setup.sh: making {venv} again with {sys.executable}: its bin/python does not run "
                             f"(Python {OLD}, gone)\n")
    assert venv_version(venv) == NOW and f"version = {NOW}." in (venv / "pyvenv.cfg").read_text()
    assert not (venv / "lib" / f"python{OLD}").exists()  # the old Python's packages are gone with it
    assert sees_system_site_packages(venv)
    assert setup_function(script, APT_DIST_PACKAGES=str(apt)).stderr == ""


@pytest.mark.skipif(another_python() is None, reason="needs a Python of another minor version (pyenv)")
def test_setup_makes_again_a_venv_made_by_another_minor_python(tmp_path):
    """A venv made by another minor version whose interpreter still runs (Trixie's python3 is 3.13, the venv was
    made by 3.11): setup.sh kept it, and installed the lock into it. Now it is made again with setup's Python."""
    other = another_python()
    venv = tmp_path / "venv"
    subprocess.run([str(other), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    made = venv_version(venv)
    result = setup_function(f'make_venv "{venv}" "{sys.executable}"')
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"setup.sh: making {venv} again with {sys.executable}: it was made by Python {made}, "
                             f"this is Python {NOW}\n")
    assert venv_version(venv) == NOW


def test_setup_and_its_helpers_pass_shellcheck():
    scripts = [REPO / "setup.sh", LOCKS / "refresh.sh", REPO / ".ci" / "run"]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout


# ----------------------------------------------------------------------------- an install that drifts
# A real venv and a real pip, offline: small wheels made here (a wheel is a zip with its metadata and RECORD),
# found through PIP_FIND_LINKS, and lock files naming them with their sha256, as requirements/refresh.sh writes.


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str | bytes]) -> Path:
    import base64
    import hashlib
    import zipfile

    stem = f"{name.replace('-', '_')}-{version}"
    entries = {**files,
               f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    data = {path: text if isinstance(text, bytes) else text.encode() for path, text in entries.items()}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data[path]).digest()).rstrip(b'=').decode()},"
              f"{len(data[path])}" for path in entries]
    entries[f"{stem}.dist-info/RECORD"] = "\n".join([*record, f"{stem}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in entries.items():
            archive.writestr(path, text)
    return wheel


def write_lock(path: Path, *wheels: Path) -> Path:
    import hashlib

    lines = []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        lines += [f"{name.replace('_', '-')}=={version} \\", f"    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}"]
    path.write_text("# made by tests/test_setup.py\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def offline_index(tmp_path) -> tuple[Path, dict[str, Path]]:
    """Wheels: alpha 1.0 and 2.0 (module alpha), beta 1.0, and gamma 1.0, whose files include an alpha package."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheels = {
        "alpha-1.0": make_wheel(folder, "alpha", "1.0", {"alpha/__init__.py": 'MADE_BY = "alpha 1.0"\n'}),
        "alpha-2.0": make_wheel(folder, "alpha", "2.0", {"alpha/__init__.py": 'MADE_BY = "alpha 2.0"\n'}),
        "beta-1.0": make_wheel(folder, "beta", "1.0", {"beta.py": 'MADE_BY = "beta 1.0"\n'}),
        "gamma-1.0": make_wheel(folder, "gamma", "1.0", {"alpha/__init__.py": 'MADE_BY = "gamma 1.0"\n',
                                                         "gamma/__init__.py": ""}),
    }
    return folder, wheels


@pytest.fixture
def real_venv(tmp_path) -> Path:
    venv = tmp_path / "drifting-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return venv


def offline(folder: Path) -> dict[str, str]:
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_CONSTRAINT": "", "PYTHONPATH": ""}


def in_venv(venv: Path, code: str, **env: str) -> str:
    result = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=REPO, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def made_by(venv: Path, module: str) -> str:
    return in_venv(venv, f"import {module}; print({module}.MADE_BY)")


def drift_line(venv: Path) -> str | None:
    return in_venv(venv, "from edge.installed import drift; found = drift(); print(found and found.line())",
                   PYTHONPATH=str(REPO)).replace("None", "") or None


def test_setup_run_again_takes_the_venv_back_to_a_changed_lock_and_out_of_a_strangers_hands(
        tmp_path, offline_index, real_venv):
    """A venv installed from a lock; the lock changes (alpha 2.0, beta dropped) and setup.sh runs again: beta
    stayed at its old version for ever (pip install -r adds and moves, never removes). Then `pip install gamma`
    (no lock pins it) writes its alpha over the pinned one: `cryedge run`'s check says so, and setup.sh run
    again takes gamma out and puts the lock's alpha back (pip saw alpha 2.0 installed and left gamma's files)."""
    folder, wheels = offline_index
    env = offline(folder)
    first = write_lock(tmp_path / "first.txt", wheels["alpha-1.0"], wheels["beta-1.0"])
    result = setup_function(f'install_lock "{real_venv}" "{first}" "./setup.sh --runtime"', **env)
    assert result.returncode == 0, result.stderr
    assert (made_by(real_venv, "alpha"), made_by(real_venv, "beta")) == ("alpha 1.0", "beta 1.0")
    assert drift_line(real_venv) is None

    second = write_lock(tmp_path / "second.txt", wheels["alpha-2.0"])
    result = setup_function(f'install_lock "{real_venv}" "{second}" "./setup.sh --runtime"', **env)
    assert result.returncode == 0, result.stderr
    assert made_by(real_venv, "alpha") == "alpha 2.0"
    assert in_venv(real_venv, "import importlib.util; print(importlib.util.find_spec('beta'))") == "None"
    assert f"removing what {first} pinned and {second} does not: beta" in result.stderr
    assert drift_line(real_venv) is None

    subprocess.run([str(real_venv / "bin/python"), "-m", "pip", "install", "-q", "gamma"], check=True, timeout=300,
                   env={**os.environ, **env})
    assert made_by(real_venv, "alpha") == "gamma 1.0"
    line = drift_line(real_venv)
    assert line == (f"this install no longer matches {second}, which it was installed from: gamma 1.0, which no "
                    "lock pins, wrote over alpha's alpha. Run ./setup.sh --runtime again to put it back"), line

    result = setup_function(f'install_lock "{real_venv}" "{second}" "./setup.sh --runtime"', **env)
    assert result.returncode == 0, result.stderr
    assert "removing gamma, which no lock pins: it wrote over alpha's alpha" in result.stderr
    assert made_by(real_venv, "alpha") == "alpha 2.0"
    assert in_venv(real_venv, "import importlib.util; print(importlib.util.find_spec('gamma'))") == "None"
    assert drift_line(real_venv) is None


def test_cryedge_run_says_in_one_line_that_pip_moved_a_pinned_package(tmp_path, offline_index, real_venv):
    """A venv installed from its lock, then `pip install alpha==1.0` by hand (or as another package's dependency):
    cryedge run went on without a word. It says it in one warning line, naming the package, both versions and the
    command that puts it back, and runs on (here into a configuration error of its own)."""
    folder, wheels = offline_index
    env = offline(folder)
    lock = write_lock(tmp_path / "lock.txt", wheels["alpha-2.0"])
    assert setup_function(f'install_lock "{real_venv}" "{lock}" "./setup.sh"', **env).returncode == 0
    subprocess.run([str(real_venv / "bin/python"), "-m", "pip", "install", "-q", "alpha==1.0"], check=True,
                   timeout=300, env={**os.environ, **env})
    # cryedge's own dependencies from the venv running these tests, after the drifting venv's own packages
    site = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    (next(real_venv.glob("lib/python*/site-packages")) / "tests-dependencies.pth").write_text(f"{site}\n")
    missing = tmp_path / "missing.toml"
    run = subprocess.run([str(real_venv / "bin/python"), "-m", "edge.cli", "run", "--config", str(missing)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 3, run.stderr
    said = [line for line in run.stderr.splitlines() if "no longer matches" in line]
    assert len(said) == 1 and "alpha 1.0 is installed (the lock: 2.0)" in said[0] and "./setup.sh again" in said[0], \
        run.stderr
    assert "Traceback" not in run.stderr


def test_setup_run_again_mends_a_pinned_package_a_half_finished_pip_left(tmp_path, offline_index, real_venv):
    """pip stopped half-way (a power cut, a full card) or the card lost a file: alpha's metadata is there, its module
    is not. setup.sh (and install.sh, which cryedge's one-line error names as the repair) ran pip again, which took
    alpha 2.0 as installed and left it broken. Now it says so and installs alpha again from the lock."""
    folder, wheels = offline_index
    env = offline(folder)
    lock = write_lock(tmp_path / "lock.txt", wheels["alpha-2.0"], wheels["beta-1.0"])
    assert setup_function(f'install_lock "{real_venv}" "{lock}" "./setup.sh"', **env).returncode == 0
    site = next(real_venv.glob("lib/python*/site-packages"))
    (site / "alpha" / "__init__.py").unlink()
    (site / "beta.py").write_text("MADE_BY")  # cut short
    result = setup_function(f'install_lock "{real_venv}" "{lock}" "./setup.sh"', **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"install: installing {name} again from {lock}: 1 of its files are missing or cut short (a half-finished "
        "pip, a damaged card?)" for name in ("alpha", "beta")], result.stderr
    assert (made_by(real_venv, "alpha"), made_by(real_venv, "beta")) == ("alpha 2.0", "beta 1.0")
    # mended: nothing more to say
    assert setup_function(f'install_lock "{real_venv}" "{lock}" "./setup.sh"', **env).stderr == ""


def test_a_compiled_file_a_wheel_ships_is_not_damage_when_python_writes_it_again(tmp_path, real_venv):
    """numpy 1.26.4's wheel ships numpy/distutils/__pycache__/conv_template.cpython-311.pyc with its size in RECORD;
    pip's compiling at install (and install.sh's compileall, for the image) writes it again for the path it lives
    at, another size. setup.sh and install.sh took that as a file cut short: "installing numpy again" at every run."""
    import py_compile

    folder = tmp_path / "wheels"
    folder.mkdir()
    source = tmp_path / "build-of-the-wheel" / "delta" / "template.py"
    source.parent.mkdir(parents=True)
    source.write_text('MADE_BY = "delta 1.0"\n')
    compiled = Path(py_compile.compile(str(source), cfile=str(tmp_path / "template.pyc"))).read_bytes()
    shipped = f"delta/__pycache__/template.{sys.implementation.cache_tag}.pyc"
    wheel = make_wheel(folder, "delta", "1.0", {"delta/__init__.py": "", "delta/template.py": source.read_text(),
                                                shipped: compiled})
    env = offline(folder)
    lock = write_lock(tmp_path / "lock.txt", wheel)
    for _ in range(2):
        result = setup_function(f'install_lock "{real_venv}" "{lock}" "./setup.sh"', **env)
        assert (result.returncode, result.stderr) == (0, "")
    site = next(real_venv.glob("lib/python*/site-packages"))
    assert (site / shipped).stat().st_size != len(compiled)  # written again, for the path it is at
    assert made_by(real_venv, "delta.template") == "delta 1.0"


def test_setup_takes_the_tflite_runtime_venv_to_a_changed_lock_and_records_it(tmp_path, offline_index):
    """.venv-tflite-runtime (the converter's tests' tflite-runtime 2.14) got only `pip install -r` of its lock: beta,
    which the new lock dropped, stayed at its old version for ever, nothing recorded what the venv was installed
    from, and the tests ran it as they found it. Now setup.sh keeps it to its lock as it keeps .venv: what the old
    lock pinned and the new one does not goes, saying so, and the venv records the lock it holds."""
    folder, wheels = offline_index
    env = offline(folder)
    venv = tmp_path / ".venv-tflite-runtime"
    first = write_lock(tmp_path / "first.txt", wheels["alpha-1.0"], wheels["beta-1.0"])
    result = setup_function(f'tflite_runtime_venv "{venv}" "{sys.executable}" "{first}"', **env)
    assert result.returncode == 0, result.stderr
    assert (made_by(venv, "alpha"), made_by(venv, "beta")) == ("alpha 1.0", "beta 1.0")

    second = write_lock(tmp_path / "second.txt", wheels["alpha-2.0"])
    result = setup_function(f'tflite_runtime_venv "{venv}" "{sys.executable}" "{second}"', **env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"install: removing what {first} pinned and {second} does not: beta\n"
    assert made_by(venv, "alpha") == "alpha 2.0"
    assert in_venv(venv, "import importlib.util; print(importlib.util.find_spec('beta'))") == "None"
    record = (venv / "cryedge-lock.txt").read_text()
    assert f"# lock: {second}\n# again: ./setup.sh\n" in record and record.endswith(second.read_text())
    assert drift_line(venv) is None


# ----------------------------------------------------------------------------- a Python the locks are not for
# Raspberry Pi OS Trixie's python3 is 3.13: the Pi's mediapipe 0.10.18 and numpy 1.26.4 have no wheel for it
# (requirements/README.md). setup.sh installed apt packages, made .venv and ran pip, which said "no matching
# distribution" or built numpy 1.26.4 from its source for minutes and failed.


def test_the_locks_python_is_the_one_refresh_resolves_them_for():
    from edge.installed import LOCKS_PYTHON

    assert f"--python-version {LOCKS_PYTHON} " in (LOCKS / "refresh.sh").read_text()


@pytest.mark.skipif(another_python() is None, reason="needs a Python of another minor version (pyenv)")
def test_setup_refuses_a_python_the_locks_are_not_for_in_one_line(tmp_path):
    other = another_python()
    minor = python_version(other)
    result = setup_function(f'refuse_another_python "{other}" requirements/aarch64.txt "./setup.sh --runtime"; '
                            f'echo "went on"')
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr == (
        f"setup.sh: error: {other} is Python {minor}, and requirements/aarch64.txt has wheels for Python 3.11 only, "
        "Debian and Raspberry Pi OS Bookworm's, which cryedge supports (requirements/README.md says why): install on "
        "Bookworm (a Pi: Raspberry Pi OS (Legacy) in Raspberry Pi Imager) or give a Python 3.11: "
        "PYTHON=/path/to/python3.11 ./setup.sh --runtime\n")
    # the Python the locks are for goes on, saying nothing; and so does another with x86-64's runtime lock, which has
    # every wheel for 3.13 too (requirements/README.md)
    for python, lock in [(sys.executable, "aarch64.txt"), (sys.executable, "tflite-runtime.txt"), (other, "x86_64.txt")]:
        result = setup_function(f'refuse_another_python "{python}" requirements/{lock} ./setup.sh')
        assert (result.returncode, result.stderr) == (0, ""), (python, lock)


def python_version(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
