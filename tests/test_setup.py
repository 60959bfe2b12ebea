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


def test_setup_and_its_helpers_pass_shellcheck():
    scripts = [REPO / "setup.sh", LOCKS / "refresh.sh", REPO / ".ci" / "run"]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
