"""install.sh lays down a tree that the unit's paths agree with, the same tree every time it runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge import config, paths

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "cryedge.service"

sys.path.insert(0, str(Path(__file__).parent))
from sandbox import unit_settings

SETTINGS = unit_settings(UNIT)


def install(*args: str | Path, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(INSTALL), *map(str, args)], check=False, capture_output=True, text=True, timeout=600, env=env,
        cwd=cwd,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, mode and content or link target."""
    tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            tree[str(path.relative_to(root))] = ("link", os.readlink(path))
        elif path.is_dir():
            tree[str(path.relative_to(root))] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            tree[str(path.relative_to(root))] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
    return tree


def inside(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    return path


@pytest.fixture
def installed(tmp_path, password_file) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    install("--root", root, "--no-venv", "--mqtt-password-file", password_file)
    return root


def test_install_script_passes_shellcheck():
    scripts = [*sorted((REPO / "systemd").rglob("*.sh")), REPO / "systemd" / "cryedge-start"]
    assert INSTALL in scripts
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout


def test_the_unit_is_installed_and_enabled(installed):
    unit = installed / "etc/systemd/system/cryedge.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    wants = installed / "etc/systemd/system/multi-user.target.wants/cryedge.service"
    assert os.readlink(wants) == "/etc/systemd/system/cryedge.service"  # resolves inside the image


def test_the_config_the_unit_names_is_the_example_and_is_valid(installed):
    exec_start = SETTINGS["ExecStart"][-1].split()
    config_path = inside(installed, exec_start[exec_start.index("--config") + 1])
    assert config_path.read_bytes() == (REPO / "examples" / "cryedge.toml").read_bytes()
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o644
    assert config_path.parent == inside(installed, "/etc/" + SETTINGS["ConfigurationDirectory"][-1])
    loaded = config.load_config(config_path, environ={})
    assert loaded.source.type == "picamera2"


def test_the_credential_is_where_load_credential_reads_it_and_root_only(installed):
    name, source = SETTINGS["LoadCredential"][-1].lstrip("-").split(":")
    credential = inside(installed, source)
    assert credential.read_text() == "s3cret\n"
    info = credential.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    # the daemon reads it as systemd hands it over: $CREDENTIALS_DIRECTORY/<name>
    credentials = credential.parent.parent / "credentials"
    credentials.mkdir()
    shutil.copy(credential, credentials / name)
    loaded = config.load_config(environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert loaded.mqtt.password.get_secret_value() == "s3cret"


def test_the_service_user_exists_with_its_home_in_the_state_directory(installed):
    passwd = {
        line.split(":")[0]: line.split(":") for line in (installed / "etc/passwd").read_text().splitlines()
    }
    user = passwd[SETTINGS["User"][-1]]
    assert user[5] == "/var/lib/" + SETTINGS["StateDirectory"][-1]
    assert user[6] == "/usr/sbin/nologin"
    assert 0 < int(user[2]) < 1000  # a system user
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (installed / "etc/group").read_text().splitlines()
    }
    for group in SETTINGS["SupplementaryGroups"][-1].split():
        assert "cryedge" in groups[group], group
    assert (installed / "usr/lib/sysusers.d/cryedge.conf").is_file()  # systemd-sysusers keeps it at boot


def test_the_models_folder_the_unit_points_at_exists(installed):
    environment = dict(item.split("=", 1) for line in SETTINGS["Environment"] for item in line.split())
    models = inside(installed, environment["CRYEDGE_MODELS"])
    assert (models / "landmarks").is_dir()  # where install.sh fetches the bundles and the daemon reads them
    assert paths.landmarks_dir({"CRYEDGE_MODELS": environment["CRYEDGE_MODELS"]}) == Path(
        environment["CRYEDGE_MODELS"]) / "landmarks"


def test_running_it_again_gives_the_same_tree_and_keeps_local_edits(installed, password_file):
    before = snapshot(installed)
    install("--root", installed, "--no-venv")
    assert snapshot(installed) == before
    # a local edit of the config survives a reinstall; the password is replaced only when given
    edited = installed / "etc/cryedge/cryedge.toml"
    edited.write_text('[source]\nuri = "/dev/video0"\n')
    password_file.write_text("new\n")
    install("--root", installed, "--no-venv", "--mqtt-password-file", password_file)
    assert edited.read_text() == '[source]\nuri = "/dev/video0"\n'
    assert (installed / "etc/cryedge/mqtt_password").read_text() == "new\n"


def test_bad_arguments_are_refused_with_the_usage(tmp_path):
    result = install("--root", tmp_path, "--frobnicate", check=False)
    assert result.returncode != 0
    assert "unknown argument: --frobnicate" in result.stderr and "usage:" in result.stderr
    result = install("--root", tmp_path / "missing", check=False)
    assert result.returncode != 0 and "is not a directory" in result.stderr


def test_cryedge_service_install_runs_the_script(tmp_path):
    cryedge = Path(sys.executable).with_name("cryedge")
    result = subprocess.run(
        [str(cryedge), "service", "install", "--root", str(tmp_path), "--no-venv", "--no-models"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc/systemd/system/cryedge.service").read_bytes() == UNIT.read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
def test_venv_install_gives_the_program_the_unit_starts(tmp_path, wheel):
    """The venv path, offline: the package without its dependencies (those come from PyPI on a Pi).

    Without the caller's PYTHONPATH or PYTHONHOME (helpers run the tests with their checkout on PYTHONPATH): the
    probe found that checkout's edge, not the venv's, and pip could take the checkout's cryedge as installed."""
    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    root = tmp_path / "root"
    root.mkdir()
    args = [
        "--root",
        root,
        "--package",
        wheel,
        "--no-lock",
        "--pip-arg",
        "--no-deps",
        "--pip-arg",
        "--no-index",
        "--no-models",
    ]
    install(*args, env=clean)
    start, program = (inside(root, path) for path in SETTINGS["ExecStart"][-1].split()[:2])
    assert start.read_bytes() == (REPO / "systemd" / "cryedge-start").read_bytes() and os.access(start, os.X_OK)
    assert os.access(program, os.X_OK)
    assert program.read_text().splitlines()[0] == "#!/opt/cryedge/venv/bin/python"
    venv = inside(root, "/opt/cryedge/venv")
    leftovers = [
        p
        for p in [*venv.glob("bin/*"), venv / "pyvenv.cfg"]
        if p.is_file() and str(root) in p.read_text(errors="ignore")
    ]
    assert leftovers == []  # nothing in the image points back at the build machine's path
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    # the venv runs cryedge's code and sees apt's packages (python3-picamera2 on a Pi)
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import edge.notify, sys; print(edge.notify.__file__); print(sys.path)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=clean,
    )
    module, search_path = probe.stdout.splitlines()
    assert module.startswith(str(venv / "lib"))
    assert "/usr/lib/python3/dist-packages" in search_path
    # the unit verifies against this tree: ExecStart is the real program now
    (root / "usr/lib/systemd").mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "cryedge.service"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # a second run over the venv leaves the tree as it was
    before = snapshot(root)
    install(*args, env=clean)
    assert snapshot(root) == before


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
def test_the_venv_is_taken_to_a_changed_lock_and_records_it(tmp_path):
    """install.sh with a lock, then again with a lock that moved alpha and dropped beta: beta stayed in the
    service's venv (pip install -r never removes). Now it goes, and the venv records the lock and the command that
    installs it again, which `cryedge run` compares with the venv (edge/installed.py). Offline: small wheels."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_setup import make_wheel, write_lock

    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    alpha1 = make_wheel(wheels, "alpha", "1.0", {"alpha/__init__.py": ""})
    alpha2 = make_wheel(wheels, "alpha", "2.0", {"alpha/__init__.py": ""})
    beta = make_wheel(wheels, "beta", "1.0", {"beta.py": ""})
    package = make_wheel(wheels, "omega", "1.0", {"omega.py": ""})  # stands in for cryedge's wheel
    root = tmp_path / "root"
    root.mkdir()
    common = ["--root", root, "--package", package, "--pip-arg", "--no-index", "--pip-arg", f"--find-links={wheels}",
              "--no-models", "--no-enable"]
    install(*common, "--lock", write_lock(tmp_path / "first.txt", alpha1, beta), env=clean)
    site = next(inside(root, "/opt/cryedge/venv").glob("lib/python*/site-packages"))
    assert {p.name for p in site.glob("*.dist-info")} >= {"alpha-1.0.dist-info", "beta-1.0.dist-info"}
    second = write_lock(tmp_path / "second.txt", alpha2)
    again = install(*common, "--lock", second, env=clean)
    assert {p.name for p in site.glob("*.dist-info")} >= {"alpha-2.0.dist-info", "omega-1.0.dist-info"}
    assert not list(site.glob("beta*")), again.stderr
    record = inside(root, "/opt/cryedge/venv/cryedge-lock.txt").read_text()
    assert f"# lock: {second}\n" in record
    assert f"# again: sudo {REPO}/systemd/install.sh --package {package} --lock {second} --pip-arg --no-index " \
        f"--pip-arg --find-links={wheels} --no-models --no-enable\n" in record
    assert second.read_text() in record


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
def test_a_venv_an_os_upgrade_left_is_made_again_and_filled_from_the_lock(tmp_path):
    """Bookworm to Trixie moves Python's minor version: the service's venv links to an interpreter that is gone,
    cryedge fails before any of its code runs (203/EXEC, restarted for ever), and install.sh run again kept that
    venv (its bin/python was there, a dangling link) and failed in pip. Now it says so in one line, makes the venv
    again with --system-site-packages, and installs the lock into it. Offline: small wheels."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_setup import OLD, left_by_an_upgrade, make_wheel, venv_version, write_lock

    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    alpha = make_wheel(wheels, "alpha", "1.0", {"alpha/__init__.py": ""})
    package = make_wheel(wheels, "omega", "1.0", {"omega.py": ""})  # stands in for cryedge's wheel
    root = tmp_path / "root"
    venv = inside(root, "/opt/cryedge/venv")
    venv.parent.mkdir(parents=True)
    left_by_an_upgrade(venv)
    result = install("--root", root, "--package", package, "--pip-arg", "--no-index", "--pip-arg",
                     f"--find-links={wheels}", "--no-models", "--no-enable", "--lock",
                     write_lock(tmp_path / "lock.txt", alpha), env=clean)
    said = [line for line in result.stderr.splitlines() if "again" in line and "venv" in line]
    assert said == [f"install: making /opt/cryedge/venv again with /usr/bin/python3: its bin/python does not run "
                    f"(Python {OLD}, gone)"], result.stderr
    now = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert venv_version(venv) == now
    config = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in config and f"version = {now}." in config
    site = venv / "lib" / f"python{now}" / "site-packages"
    assert {p.name for p in site.glob("*.dist-info")} >= {"alpha-1.0.dist-info", "omega-1.0.dist-info"}
    assert not (venv / "lib" / f"python{OLD}").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
@pytest.mark.parametrize("locked", [True, False], ids=["lock", "no-lock"])
def test_install_run_again_with_the_same_wheel_mends_cryedge_itself(tmp_path, wheel, locked):
    """A half-finished pip or a damaged card took cryedge's own files from the service's venv, and its script: the
    unit's start check says so and names install.sh as the repair. install.sh with the same wheel (--package, as
    a Pi without a build gets it) ran pip, which took cryedge 0.1.0 as installed ("already installed with the
    same version as the provided wheel") and left the venv as broken; the unit failed again. Now it says so in one
    line and installs cryedge again, and run once more has nothing to mend. A real venv, offline."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_setup import make_wheel, write_lock

    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    root = tmp_path / "root"
    root.mkdir()
    args = ["--root", root, "--package", wheel, "--pip-arg", "--no-index", "--no-models", "--no-enable"]
    if locked:
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        alpha = make_wheel(wheels, "alpha", "1.0", {"alpha/__init__.py": ""})
        args += ["--lock", write_lock(tmp_path / "lock.txt", alpha), "--pip-arg", f"--find-links={wheels}"]
    else:
        args += ["--no-lock", "--pip-arg", "--no-deps"]
    install(*args, env=clean)
    venv = inside(root, "/opt/cryedge/venv")
    site = next(venv.glob("lib/python*/site-packages"))
    record = (site / "cryedge-0.1.0.dist-info/RECORD").read_text().splitlines()
    taken = sum(1 for line in record if line.startswith("edge/") and line.split(",")[2]) + 1  # and the script
    shutil.rmtree(site / "edge")
    (venv / "bin/cryedge").unlink()
    start = [str(inside(root, "/opt/cryedge/libexec/cryedge-start")), str(venv / "bin/python"), "-c",
             "import edge; print(edge.__file__)"]
    broken = subprocess.run(start, capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert broken.returncode == 8 and "cryedge does not import: ModuleNotFoundError: No module named 'edge'. " \
        "Repair it with: sudo " in broken.stderr, broken.stderr

    repair = install(*args, env=clean)
    started = subprocess.run(start, capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert (started.returncode, started.stdout, started.stderr) == (0, f"{site}/edge/__init__.py\n", "")
    mended = [line for line in repair.stderr.splitlines() if "installing" in line]
    assert mended == [f"install: installing cryedge again from {wheel}: {taken} of its files are missing or cut "
                      "short (a half-finished pip, a damaged card?)"], repair.stderr
    assert (venv / "bin/cryedge").read_text().splitlines()[0] == "#!/opt/cryedge/venv/bin/python"
    assert "installing" not in install(*args, env=clean).stderr  # mended: nothing more to say


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3")
def test_the_repair_a_broken_venv_names_is_this_install_again_and_says_when_its_wheel_is_gone(tmp_path, wheel):
    """A Pi installed from a wheel (--package, a lock, pip options): a damaged venv's line named the repair as
    `sudo .../systemd/install.sh` alone, which installs the checkout and its default lock instead (offline here, and
    on a Pi without that checkout, it fails). Now it is the install as it was run, its relative paths made absolute,
    and that command repairs the venv from the same wheel; once that wheel is gone (a download in /tmp), the line
    says so, from cryedge-start and from cryedge's own Python alike. A real venv, offline."""
    import json
    import shlex

    sys.path.insert(0, str(REPO / "tests"))
    from test_setup import make_wheel, write_lock

    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_lock(tmp_path / "lock.txt", make_wheel(wheels, "alpha", "1.0", {"alpha/__init__.py": ""}))
    downloaded = tmp_path / "downloads" / wheel.name
    downloaded.parent.mkdir()
    shutil.copy(wheel, downloaded)
    root = tmp_path / "root"
    root.mkdir()
    install("--root", root, "--package", f"downloads/{wheel.name}", "--lock", "lock.txt", "--pip-arg", "--no-index",
            "--pip-arg", f"--find-links={wheels}", "--no-models", "--no-enable", env=clean, cwd=tmp_path)
    venv = inside(root, "/opt/cryedge/venv")
    site = next(venv.glob("lib/python*/site-packages"))
    start = [str(inside(root, "/opt/cryedge/libexec/cryedge-start")), str(venv / "bin/python"), "-c",
             "import edge; print(edge.__file__)"]

    shutil.rmtree(site / "edge")  # a half-finished pip, a damaged card
    broken = subprocess.run(start, capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert broken.returncode == 8, broken.stderr
    repair = broken.stderr.split("Repair it with: ", 1)[1].rstrip("\n")
    assert repair == (f"sudo {REPO}/systemd/install.sh --package {downloaded} --lock {tmp_path}/lock.txt --pip-arg "
                      f"--no-index --pip-arg --find-links={wheels} --no-models --no-enable")

    # the command as printed (without sudo, into the test's root), from another folder: cryedge back from that wheel
    mended = subprocess.run(["bash", *shlex.split(repair)[1:], "--root", str(root)], capture_output=True, text=True,
                            timeout=600, env=clean, cwd="/")
    assert mended.returncode == 0, mended.stderr
    started = subprocess.run(start, capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert (started.returncode, started.stdout, started.stderr) == (0, f"{site}/edge/__init__.py\n", "")
    installed_from = json.loads(next(site.glob("cryedge-*.dist-info")).joinpath("direct_url.json").read_text())
    assert installed_from["url"] == downloaded.as_uri()

    downloaded.unlink()  # the download is cleaned away; the next damage names what is gone
    gone = (f"{repair} (but {downloaded} is no longer there: put it back, or run a cryedge checkout's "
            f"systemd/install.sh with those options, --package a cryedge wheel in place of one that is gone)")
    said = subprocess.run([str(venv / "bin/python"), "-c", "from edge.installed import Record; import sys; "
                           "from pathlib import Path; print(Record.read(Path(sys.prefix)).repair())"],
                          capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert said.stdout == f"{gone}\n", said.stderr
    shutil.rmtree(site / "edge")
    broken = subprocess.run(start, capture_output=True, text=True, timeout=120, env=clean, cwd="/")
    assert broken.returncode == 8 and broken.stderr.endswith(f"Repair it with: {gone}\n"), broken.stderr


def test_a_python_the_locks_are_not_for_is_refused_in_one_line_before_anything_is_made(tmp_path):
    """Raspberry Pi OS Trixie's python3 is 3.13, for which the Pi's lock has no wheels (mediapipe 0.10.18, numpy
    1.26.4): install.sh added the user, made the venv (again, over the Bookworm one an upgrade left) and ran pip, whose resolver
    said "no matching distribution", or which built numpy from source for minutes and failed. Now one line naming
    what is supported and what to do, and nothing made. (Offline: the old script's pip failed at once here.)"""
    sys.path.insert(0, str(REPO / "tests"))
    from test_setup import another_python, python_version

    other = another_python()
    if other is None:
        pytest.skip("needs a Python of another minor version (pyenv)")
    clean = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    root = tmp_path / "root"
    root.mkdir()
    lock = REPO / "requirements" / "aarch64.txt"  # the Pi's
    result = install("--root", root, "--python", other, "--lock", lock, "--pip-arg", "--no-index", "--no-models",
                     "--no-enable", check=False, env=clean)
    assert (result.returncode, result.stderr) == (1, (
        f"install: error: {other} is Python {python_version(other)}, and {lock} has wheels for Python 3.11 only, Debian "
        "and Raspberry Pi OS Bookworm's, which cryedge supports (requirements/README.md says why): install on Bookworm "
        f"(a Pi: Raspberry Pi OS (Legacy) in Raspberry Pi Imager) or give a Python 3.11: sudo {INSTALL} --python "
        "/path/to/python3.11\n"))
    assert list(root.iterdir()) == []


def test_a_unit_installed_without_its_program_is_said_to_be(tmp_path):
    """--no-venv with no venv there: the unit's ExecStart does not exist, and the service would fail at every start
    (203/EXEC, every RestartSec, for ever) after an install that said "done". It says so, in one line."""
    root = tmp_path / "root"
    root.mkdir()
    result = install("--root", root, "--no-venv", "--no-models")
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned == ["install: warning: no /opt/cryedge/venv/bin/cryedge (--no-venv): cryedge.service cannot start "
                      "until that venv is made"], result.stderr
    assert not inside(root, SETTINGS["ExecStart"][-1].split()[1]).exists()


# ----------------------------------------------------------------------------- the running service after an install
# No systemd as PID 1 here: systemctl is a stand-in on PATH that records what it is asked and answers is-active as
# told; install.sh's functions are sourced (CRYEDGE_INSTALL_FUNCTIONS_ONLY), as tests/test_setup.py does setup.sh's.

STAND_IN_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$SYSTEMCTL_CALLS"
case "$*" in
    *is-active*) exit "${SYSTEMCTL_ACTIVE:-0}" ;;
    *is-failed*) exit "${SYSTEMCTL_FAILED:-1}" ;;
    *restart*) exit "${SYSTEMCTL_RESTART:-0}" ;;
esac
"""


def restart_after_install(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    # the old script had no such guard: sourced, it would have installed onto this machine
    assert "CRYEDGE_INSTALL_FUNCTIONS_ONLY" in INSTALL.read_text()
    stand_in = tmp_path / "bin"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "systemctl").write_text(STAND_IN_SYSTEMCTL)
    (stand_in / "systemctl").chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    result = subprocess.run(
        ["bash", "-c", f'source "{INSTALL}" --no-venv {" ".join(args)} && if restart_if_running; then echo restarted; fi'],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CRYEDGE_INSTALL_FUNCTIONS_ONLY": "1", "PATH": f"{stand_in}:{os.environ['PATH']}",
             "SYSTEMCTL_CALLS": str(calls), **env},
    )
    return result, calls.read_text().splitlines()


def test_a_running_service_is_restarted_onto_what_was_installed(tmp_path):
    """install.sh run again (a changed lock, a new checkout) left the running daemon on the old install until the
    next boot, its modules in memory, the new ones imported lazily over them, and said "then: systemctl start
    cryedge", which does nothing to a running service. Now it restarts it, saying so."""
    result, calls = restart_after_install(tmp_path)
    assert result.returncode == 0 and result.stdout == "restarted\n", result.stderr
    assert calls == ["--quiet is-active cryedge.service", "restart cryedge.service"]
    assert result.stderr == "install: restarting cryedge.service, which was running what was installed before\n"


def test_a_service_that_failed_is_started_again_by_the_install_that_repairs_it(tmp_path):
    """cryedge-start's line on a broken venv names install.sh as the repair; the unit stayed failed after it."""
    result, calls = restart_after_install(tmp_path, SYSTEMCTL_ACTIVE="3", SYSTEMCTL_FAILED="0")
    assert result.returncode == 0 and result.stdout == "restarted\n", result.stderr
    assert calls == ["--quiet is-active cryedge.service", "--quiet is-failed cryedge.service", "restart cryedge.service"]
    assert result.stderr == "install: starting cryedge.service again, which had failed (journalctl -u cryedge -n 5 says why)\n"


def test_a_service_that_is_not_running_is_left_alone(tmp_path):
    result, calls = restart_after_install(tmp_path, SYSTEMCTL_ACTIVE="3")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert calls == ["--quiet is-active cryedge.service", "--quiet is-failed cryedge.service"]
    result, calls = restart_after_install(tmp_path, "--root", str(tmp_path))  # an image: nothing runs there
    assert (result.returncode, result.stdout, calls) == (0, "", [])


def test_a_service_that_does_not_start_again_fails_the_install(tmp_path):
    result, calls = restart_after_install(tmp_path, SYSTEMCTL_RESTART="1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == ("install: error: cryedge.service did not start again on this install: "
                                              "systemctl status cryedge; journalctl -u cryedge -n 20")
