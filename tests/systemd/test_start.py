"""A venv that cannot run cryedge fails the service once, in one line that names the repair; a sound one runs.

There is no systemd as PID 1 here: the unit's ExecStart is run as systemd runs it (its /opt/cryedge and /etc/cryedge
paths inside a root that install.sh laid down, the journal's $JOURNAL_STREAM set, an exec that fails being status
203/EXEC), against real venvs broken the ways an OS upgrade, a half-finished pip or a damaged card leave them, and
what it exits with is checked against the unit's RestartPreventExitStatus=.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import InstallError
from edge.installed import Record

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cryedge.service"
START = REPO / "systemd" / "cryedge-start"

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(REPO / "tests"))
from sandbox import unit_settings
from test_setup import another_python

SETTINGS = unit_settings(UNIT)
NOT_RESTARTED = {int(code) for code in SETTINGS["RestartPreventExitStatus"][-1].split()}
EXIT_EXEC = 203  # systemd's status for a main process it could not execute (203/EXEC)
CLEAN = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The tree install.sh lays down, without a venv (each test makes its own at /opt/cryedge/venv)."""
    root = tmp_path_factory.mktemp("root")
    result = subprocess.run(["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--no-venv",
                             "--no-models", "--no-enable"], capture_output=True, text=True, timeout=300, env=CLEAN)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def venv(root, wheel) -> Path:
    """A real venv at the unit's path with cryedge's wheel installed by pip; its dependencies are this venv's."""
    venv = root / "opt/cryedge/venv"
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=300, env=CLEAN)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "tests-dependencies.pth").write_text(f"{next(Path(sys.prefix).glob('lib/python*/site-packages'))}\n")
    # as install.sh records it: the command the repair line names
    Record("requirements/x86_64.txt", "sudo /home/pi/cryedge/systemd/install.sh", "").write(venv)
    return venv


def relink_python(venv: Path, target: Path) -> None:
    """bin/python and its siblings link to ``target``, as a venv made by that interpreter has them."""
    for link in venv.glob("bin/python*"):
        link.unlink()
        link.symlink_to(target)


def exec_start(root: Path) -> subprocess.CompletedProcess:
    """The unit's ExecStart as systemd starts it, its paths inside ``root``."""
    command = [arg.replace("/opt/cryedge/", f"{root}/opt/cryedge/").replace("/etc/cryedge/", f"{root}/etc/cryedge/")
               for arg in SETTINGS["ExecStart"][-1].split()]
    environ = {**CLEAN, "JOURNAL_STREAM": "8:12345"}
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=environ, cwd="/")
    except OSError as error:  # what systemd logs, and the status it gives the main process
        return subprocess.CompletedProcess(command, EXIT_EXEC, "", f"Failed to execute {command[0]}: {error}\n")


def assert_one_line_and_not_restarted(result: subprocess.CompletedProcess, venv: Path, why: str) -> None:
    assert result.returncode in NOT_RESTARTED, (result.returncode, result.stderr[-2000:])
    assert result.returncode == InstallError.exit_code
    assert result.stderr == (f"<3>cryedge: cannot start: the venv {venv} cannot run cryedge: {why}. "
                             f"Repair it with: sudo /home/pi/cryedge/systemd/install.sh\n")


@pytest.mark.slow
def test_a_venv_whose_python_an_os_upgrade_took_away_fails_once_saying_so(root, venv):
    """Bookworm to Trixie: /usr/bin/python3.11 is gone and the venv's bin/python links to it. The service failed at
    every start with 203/EXEC ("No such file or directory", naming the cryedge script, not the Python), which
    systemd restarts every RestartSec for ever. Now: one line, naming the link and the repair, and exit 8."""
    gone = Path("/usr/bin/python3.9")
    assert not gone.exists()
    relink_python(venv, gone)
    made = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert_one_line_and_not_restarted(exec_start(root), venv, f"its bin/python does not run: it links to {gone}, "
                                      f"which is gone (Python {made} made the venv: an OS upgrade?)")


@pytest.mark.slow
@pytest.mark.skipif(another_python() is None, reason="needs a Python of another minor version (pyenv)")
def test_a_venv_whose_python_is_now_another_version_fails_once_saying_so(root, venv):
    """/usr/bin/python3 upgraded from 3.11 to 3.13 in place: the venv's bin/python runs, but reads lib/python3.13,
    where cryedge is not: a traceback (ModuleNotFoundError) at every start, restarted for ever."""
    other = another_python()
    relink_python(venv, other)
    now = subprocess.run([str(other), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    made = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert_one_line_and_not_restarted(exec_start(root), venv, f"it was made by Python {made}, and its bin/python is "
                                      f"now Python {now} (an OS upgrade)")


@pytest.mark.slow
def test_a_venv_a_half_finished_pip_left_fails_once_saying_so(root, venv):
    """pip stopped half-way through replacing cryedge (power cut, full card): its files are gone, its script is
    there. A traceback at every start, restarted for ever; now one line and exit 8."""
    site = next(venv.glob("lib/python*/site-packages"))
    subprocess.run(["rm", "-rf", str(site / "edge")], check=True)
    assert (venv / "bin/cryedge").exists()
    assert_one_line_and_not_restarted(exec_start(root), venv,
                                      "cryedge does not import: ModuleNotFoundError: No module named 'edge'")


@pytest.mark.slow
def test_no_venv_at_all_fails_once_saying_so(root):
    subprocess.run(["rm", "-rf", str(root / "opt/cryedge/venv")], check=True)
    result = exec_start(root)
    assert result.returncode == InstallError.exit_code in NOT_RESTARTED
    assert result.stderr == (f"<3>cryedge: cannot start: the venv {root}/opt/cryedge/venv cannot run cryedge: there is "
                             f"no {root}/opt/cryedge/venv. Repair it with: sudo systemd/install.sh, from the cryedge "
                             "checkout\n")


def test_install_sh_puts_the_start_check_where_the_unit_runs_it(root):
    installed = root / SETTINGS["ExecStart"][-1].split()[0].lstrip("/")
    assert installed.read_bytes() == START.read_bytes()
    assert os.stat(installed).st_mode & 0o777 == 0o755


@pytest.mark.slow
def test_a_sound_venv_runs_cryedge_in_the_same_process(root, venv):
    """The check passes and cryedge replaces it: the process systemd started is cryedge's (Type=notify's main
    process; NotifyAccess=main), with the arguments as given."""
    start = str(root / "opt/cryedge/libexec/cryedge-start")
    version = subprocess.run([start, str(venv / "bin/cryedge"), "--version"], capture_output=True, text=True,
                             timeout=120, env=CLEAN)
    assert (version.returncode, version.stdout, version.stderr) == (0, "cryedge 0.1.0\n", "")
    process = subprocess.Popen([start, str(venv / "bin/python"), "-c", "import os, sys; print(os.getpid(), sys.argv)",
                                "two words"], stdout=subprocess.PIPE, text=True, env=CLEAN)
    out, _ = process.communicate(timeout=120)
    assert out == f"{process.pid} ['-c', 'two words']\n"


@pytest.mark.slow
def test_the_check_runs_under_the_units_restrictions(root, venv):
    """System call filter, W^X and no new privileges (sandbox.py) as systemd applies them: the shell, the venv's
    Python importing cryedge's command line, then cryedge itself."""
    start = str(root / "opt/cryedge/libexec/cryedge-start")
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("sandbox.py")), str(UNIT), "--", start,
                             str(venv / "bin/cryedge"), "--version"], capture_output=True, text=True, timeout=120,
                            env=CLEAN)
    assert (result.returncode, result.stdout, result.stderr) == (0, "cryedge 0.1.0\n", "")


@pytest.mark.slow
def test_a_dependency_a_half_finished_pip_left_fails_once_saying_so(root, venv):
    """pip stopped half-way through pydantic (power cut, full card): its package is there, some of its files are
    not. cryedge's command line imports, so the check passes and cryedge starts, and its import of the config module
    failed with a traceback at every start, exit 1, restarted for ever. Now one line naming the module and the
    repair, and exit 8. (The broken pydantic is in the venv, before this venv's sound one on the path.)"""
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "pydantic").mkdir()
    (site / "pydantic/__init__.py").write_text("from .main import BaseModel\n")  # main.py never written
    result = exec_start(root)
    assert result.returncode == InstallError.exit_code in NOT_RESTARTED, result.stderr[-2000:]
    assert result.stderr == ("cryedge: this install is incomplete or damaged: ModuleNotFoundError: No module named "
                             "'pydantic.main' (a half-finished pip, a damaged card?); install it again: sudo "
                             "/home/pi/cryedge/systemd/install.sh\n")


@pytest.mark.slow
def test_a_dependency_imported_at_run_time_that_does_not_import_fails_once_saying_so(root, venv, tmp_path):
    """The same for a module imported once the daemon runs (OpenCV, when the source opens): it was exit 70, "a bug
    in cryedge", which systemd restarts every 10 s for ever. (The demo run: no camera, no broker configured.)"""
    models = REPO / "models"
    if not (models / "landmarks" / "face_landmarker.task").exists():
        pytest.skip("landmark bundles not built (cryedge models fetch)")
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "cv2").mkdir()
    (site / "cv2/__init__.py").write_text("from .cv2 import *\n")  # its native module never written
    result = subprocess.run([str(venv / "bin/cryedge"), "run"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**CLEAN, "HOME": str(tmp_path), "CRYEDGE_MODELS": str(models)})
    assert result.returncode == InstallError.exit_code in NOT_RESTARTED, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == (
        "cryedge: this install is incomplete or damaged: ModuleNotFoundError: No module named 'cv2.cv2' (a "
        "half-finished pip, a damaged card?); install it again: sudo /home/pi/cryedge/systemd/install.sh")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_dependency_file_cut_short_fails_once_saying_so(root, venv):
    """A card that lost the end of a file: pydantic's __init__.py does not parse. A traceback (SyntaxError), exit 1,
    at every start; now one line naming the file, and exit 8."""
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "pydantic").mkdir()
    (site / "pydantic/__init__.py").write_text("from typing import (\n    Any,\n")  # cut short
    result = exec_start(root)
    assert result.returncode == InstallError.exit_code in NOT_RESTARTED, result.stderr[-2000:]
    assert result.stderr == (f"cryedge: this install is incomplete or damaged: SyntaxError: {site}/pydantic/__init__.py "
                             "does not parse (line 1: '(' was never closed) (a half-finished pip, a damaged card?); "
                             "install it again: sudo /home/pi/cryedge/systemd/install.sh\n")
