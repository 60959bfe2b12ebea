"""The command line as a user meets it when the machine says no: one line and an exit code, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
LANDMARKS = REPO / "models" / "landmarks"


def cryedge(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


@pytest.mark.parametrize("command", ["models fetch", "suite build", "eval"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, command):
    """Each of these wrote a FileExistsError or NotADirectoryError traceback when its output folder was a file."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder would go\n")
    if command == "models fetch":
        args = ["models", "fetch", "--output", taken / "bundles", "--face-bundle", LANDMARKS / "face_landmarker.task",
                "--pose-bundle", LANDMARKS / "pose_landmarker.task"]
        expected = f"cryedge: cannot write into {taken / 'bundles'}: {taken} is a file"
    elif command == "suite build":
        pytest.importorskip("tensorflow")  # the converter extra, which the suite's command comes with
        args = ["suite", "build", taken]
        expected = f"cryedge: cannot write into {taken}: it is a file"
    else:
        pytest.importorskip("tensorflow")
        import cv2

        clip = tmp_path / "clip.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        for _ in range(12):
            writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.release()
        (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\nclip.avi,0.2,0.8,crying\n")
        args, expected = ["eval", clip, "--labels", tmp_path / "labels.csv", "--output-dir", taken], f"cryedge: cannot write into {taken}: it is a file"
    done = cryedge(*args)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == [expected], done.stderr


WRITERS = {  # every command that writes an output, given OUT (a path under a regular file); inputs that are not there
    "eval": ["eval", "no-such-videos", "--output-dir", "{out}"],
    "dataset build": ["dataset", "build", "no-such-videos", "no-such-labels.csv", "--output", "{out}/data.npz"],
    "train": ["train", "--arch", "conv1d", "--data", "no-such.npz", "--output", "{out}/model.keras"],
    "convert": ["convert", "no-such.keras", "--output", "{out}/model.tflite"],
    "suite build": ["suite", "build", "{out}"],
    "demo build": ["demo", "build", "--output-dir", "{out}"],
    "demo-audio build": ["demo-audio", "build", "--output-dir", "{out}"],
    "models fetch": ["models", "fetch", "--output", "{out}"],
    "landmarks --draw": ["landmarks", "--draw", "{out}/points.png"],
    "service import-boot-config": ["service", "import-boot-config", "--boot-file", "{boot}", "--config-dir", "{out}"],
}


@pytest.mark.parametrize("command", WRITERS)
def test_an_output_under_a_file_is_said_before_any_work(tmp_path, command):
    """Each said "File exists" or "Not a directory" (or drew a traceback), and eval, dataset build, train and
    convert said it only after all their work: now one line naming the file in the way, exit 1, before the inputs."""
    if command.split()[0] in {"eval", "dataset", "train", "convert", "suite", "demo", "demo-audio"}:
        pytest.importorskip("tensorflow")  # the converter extra these commands come with
    notes = tmp_path / "notes"
    notes.write_text("a file where a folder would go\n")
    boot = tmp_path / "cryedge.toml"
    boot.write_text('[mqtt]\nhost = "broker.local"\n')
    out = notes / "out"
    done = cryedge(*(arg.format(out=out, boot=boot) for arg in WRITERS[command]), timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    wanted = out / "points.png" if command == "landmarks --draw" else out
    expected = f"cryedge: cannot write into {wanted}: {notes} is a file"
    if command == "service import-boot-config":  # all or nothing: says so
        expected += f"; nothing imported ({out} left as it was, {boot} kept)"
    assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == [expected], done.stderr
    assert notes.read_text() == "a file where a folder would go\n"


def test_a_drawing_in_a_format_there_is_none_for_is_one_line(tmp_path):
    """cv2.imwrite raised a cv2.error traceback for OUT.xyz."""
    done = cryedge("landmarks", "--draw", tmp_path / "points.xyz")
    assert done.returncode == 7 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == f"cryedge: cannot write {tmp_path / 'points.xyz'}: no picture format " \
                                           "for its suffix (give .png or .jpg)"


LATIN1 = b"berceuse-\xe9t\xe9"  # "berceuse-été" as an old Windows or Samba share names it: not UTF-8


def cryedge_bytes(*args: bytes | str | Path, timeout=300) -> subprocess.CompletedProcess:
    """The command line with file names as bytes, as a shell passes them."""
    return subprocess.run([sys.executable, "-m", "edge.cli", *(a if isinstance(a, bytes) else os.fsencode(a) for a in args)],
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)


def test_a_photo_opencv_refuses_a_folder_and_a_drawing_of_a_video_are_one_line(tmp_path):
    """A header claiming 99999 x 99999 pixels was cv2.error, exit 70 ("a bug"); a folder was said not to exist; --draw
    of a video was ignored, exit 0 and no picture."""
    (tmp_path / "huge.ppm").write_bytes(b"P6\n99999 99999\n255\n")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not looked at: --draw is refused first")
    for arguments, code, line in (
        ([tmp_path / "huge.ppm"], 7, f"cryedge: cannot read {tmp_path / 'huge.ppm'} as an image"),
        ([tmp_path], 7, f"cryedge: {tmp_path} is a folder, not an image or a video"),
        (["--draw", tmp_path / "points.png", clip], 3,
         f"cryedge: --draw {tmp_path / 'points.png'}: draws on a photo, and {clip} is a video"),
    ):
        result = cryedge("landmarks", *arguments, timeout=120)
        assert (result.returncode, result.stderr.splitlines()) == (code, [line]), result.stderr
    assert not (tmp_path / "points.png").exists()


def test_a_file_name_that_is_not_utf8_is_read_or_refused_in_one_line(tmp_path):
    """OpenCV crashed the whole process (SIGSEGV, no message) on such a name: `run --source`, `landmarks`, an eval
    folder holding one, a suite built into one. A photo is now read; a video is refused in one line, naming it."""
    from edge import paths

    folder = os.fsencode(tmp_path)
    video = folder + b"/" + LATIN1 + b".mp4"
    shutil.copyfile(paths.data_file("demo.mp4"), video)
    shown = f"{tmp_path}/berceuse-\\xe9t\\xe9.mp4"
    done = cryedge_bytes("run", "--no-health", "--fast", "--source", video)
    assert done.returncode == 5 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-2000:])
    assert done.stderr.splitlines()[-1] == f"cryedge: {shown}: its name is not UTF-8 text, which OpenCV cannot open; " \
                                           "rename the file"
    photo = folder + b"/" + LATIN1 + b".jpg"
    shutil.copyfile(paths.data_file("astronaut.jpg"), photo)
    done = cryedge_bytes("landmarks", "--json", photo)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert len(json.loads(done.stdout)["features"]) == 156


def test_an_eval_folder_or_a_suite_folder_whose_name_is_not_utf8_is_one_line(tmp_path):
    """The same crash, from a folder eval was given and from the clips suite build writes."""
    pytest.importorskip("tensorflow")  # the converter extra these commands come with
    from edge import paths

    folder = os.fsencode(tmp_path)
    shutil.copyfile(paths.data_file("demo.mp4"), folder + b"/" + LATIN1 + b".mp4")
    shutil.copyfile(paths.data_file("demo.mp4"), tmp_path / "demo.mp4")
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\ndemo.mp4,5,14,crying\n")
    done = cryedge_bytes("eval", folder, "--output-dir", tmp_path / "report")
    assert done.returncode == 7 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-2000:])
    assert done.stderr.splitlines()[-1] == (f"cryedge: {tmp_path}/berceuse-\\xe9t\\xe9.mp4: its name is not UTF-8 text, "
                                            "which OpenCV cannot open; rename the file; nothing was judged")
    done = cryedge_bytes("suite", "build", folder + b"/" + LATIN1, "--photo", "lfw-90", timeout=600)
    assert done.returncode == 7 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-2000:])
    assert done.stderr.splitlines()[-1].endswith("its name is not UTF-8 text, which OpenCV cannot open; rename the file")


# A user id with no passwd entry (systemd's DynamicUser, a container's --user 12345): pwd.getpwuid raises KeyError
# for it, as this stand-in does (the tests run as root, whose entry exists, and another uid cannot run this venv)
NO_PASSWD_ENTRY = ("import pwd, sys\n"
                   "def no_entry(uid):\n    raise KeyError(f'getpwuid(): uid not found: {uid}')\n"
                   "pwd.getpwuid = no_entry\nfrom edge.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def cryedge_without_a_home(*args) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME",
                                                                         "XDG_DATA_HOME", "STATE_DIRECTORY")}
    return subprocess.run([sys.executable, "-c", NO_PASSWD_ENTRY, *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False, cwd=REPO, env=env)


def test_without_a_home_only_the_command_that_needs_one_says_so(tmp_path):
    """The bundle builder looked up ~/.cache when imported: with no $HOME and no passwd entry every cryedge command,
    --help included, was a RuntimeError traceback. Now the others run, and those that need a home say so in a line."""
    assert cryedge_without_a_home("--help").returncode == 0
    copied = cryedge_without_a_home("models", "fetch", "--output", tmp_path / "bundles",
                                    "--face-bundle", LANDMARKS / "face_landmarker.task",
                                    "--pose-bundle", LANDMARKS / "pose_landmarker.task")
    assert copied.returncode == 0, copied.stderr[-2000:]
    assert (tmp_path / "bundles" / "pose_landmarker.task").is_file()
    config = tmp_path / "cryedge.toml"
    config.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    assert cryedge_without_a_home("config", "check", config).returncode == 0
    for args, instead in ((["models", "fetch", "--output", tmp_path / "built"],
                           "pass --cache DIR (or set $XDG_CACHE_HOME) for the mediapipe wheel"),
                          (["config", "show"], "set [outbox] path (or $STATE_DIRECTORY, $XDG_STATE_HOME) for the outbox")):
        result = cryedge_without_a_home(*args)
        assert result.returncode == 3, result.stderr[-2000:]
        assert result.stderr.splitlines() == [f"cryedge: $HOME is not set and user id {os.getuid()} has no home "
                                              f"directory; {instead}"]


@pytest.mark.parametrize("command", [["landmarks"], ["eval"], ["dataset", "build", "--output", "d.npz"]])
def test_a_camera_url_given_where_a_file_is_wanted_is_one_line_without_its_password(tmp_path, command):
    """The line named the URL as a path (rtsp:/admin:PASSWORD@...), the camera's password in a terminal or CI log."""
    url = "rtsp://admin:Sup3r-secret@127.0.0.1:1/stream1"
    arguments = [*command, url, *([tmp_path / "labels.csv"] if command[0] == "dataset" else [])]
    result = cryedge(*arguments, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("cryedge: "), result.stderr
    assert "Sup3r-secret" not in result.stderr and "admin:********@127.0.0.1:1/stream1" in lines[0], lines


@pytest.mark.parametrize("arguments, error", [
    (["run", "--brokr", "mqtt://cryedge:Sup3r-secret@127.0.0.1:1883"],
     "cryedge: error: unrecognized arguments: --brokr mqtt://cryedge:********@127.0.0.1:1883"),
    (["eval", "clips", "--tolerance", "rtsp://admin:Sup3r-secret@cam.lan/stream1"],
     "cryedge eval: error: argument --tolerance: invalid _tolerance value: 'rtsp://admin:********@cam.lan/stream1'"),
])
def test_a_mistyped_command_line_is_said_without_the_password_in_it(arguments, error):
    """argparse quotes what was typed: a misspelt --broker put the MQTT password whole into the usage error (a unit's
    ExecStart= line with it went to the journal). Now masked, as every other line masks it; still exit code 2."""
    result = cryedge(*arguments, timeout=60)
    assert result.returncode == 2 and "Sup3r-secret" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == error


def test_ctrl_c_while_the_commands_are_set_up_is_exit_130_without_a_traceback():
    """The first half second of every command (its modules imported, pydantic and numpy with them) drew a
    KeyboardInterrupt traceback on Ctrl-C. A real SIGINT, sent at a known point of that setup: as a command module
    adds its subcommands."""
    interrupted = (
        "import os, signal, sys\n"
        "import edge.cli, edge.config\n"
        "adds = edge.config.add_commands\n"
        "def ctrl_c(subparsers):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return adds(subparsers)\n"
        "edge.config.add_commands = ctrl_c\n"
        "sys.exit(edge.cli.main(['config', 'show']))\n"
    )
    result = subprocess.run([sys.executable, "-c", interrupted], capture_output=True, text=True, timeout=60,
                            check=False, cwd=REPO)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "")


def not_a_settings_file(tmp_path: Path, kind: str) -> Path:
    """A path that is no small regular file: a FIFO nobody writes to, /dev/zero, or a 2 MiB file."""
    if kind == "fifo":
        path = tmp_path / "settings.fifo"
        os.mkfifo(path)
        return path
    if kind == "zero":
        return Path("/dev/zero")
    path = tmp_path / "huge.toml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    return path


REFUSED = {"fifo": "not a regular file (a FIFO)", "zero": "not a regular file (a device)",
           "huge": "larger than 1024 KiB, too large to be a settings file"}


@pytest.mark.parametrize("kind", REFUSED)
def test_a_config_that_is_no_regular_file_is_one_line_not_a_hang(tmp_path, kind):
    """`config check /dev/zero` (or a FIFO) read for ever (and /dev/zero filled the memory): now exit 3, one line."""
    path = not_a_settings_file(tmp_path, kind)
    done = cryedge("config", "check", path, timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [f"cryedge: {path}: cannot read: {REFUSED[kind]}"]


@pytest.mark.parametrize("kind", REFUSED)
def test_a_password_file_that_is_no_regular_file_is_one_line_not_a_hang(tmp_path, kind):
    """A password_file that was /dev/zero or a FIFO hung the daemon's start (and config check) for ever."""
    path = not_a_settings_file(tmp_path, kind)
    config = tmp_path / "cryedge.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nusername = "u"\npassword_file = "{path}"\n')
    for args in (["config", "check", config], ["run", "--config", config]):
        done = cryedge(*args, timeout=60)
        assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
        assert [line for line in done.stderr.splitlines() if line.startswith("cryedge: ")] == \
            [f"cryedge: {config}: mqtt.password_file: cannot read {path}: {REFUSED[kind]}"], done.stderr


@pytest.mark.parametrize("kind", REFUSED)
def test_a_boot_config_that_is_no_regular_file_is_one_line_not_a_hang(tmp_path, kind):
    """The boot partition's cryedge.toml as a FIFO or a device hung `service import-boot-config` (the start)."""
    path = not_a_settings_file(tmp_path, kind)
    out = tmp_path / "etc"
    done = cryedge("service", "import-boot-config", "--boot-file", path, "--config-dir", out, timeout=60)
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines() == [f"cryedge: {path}: cannot read: {REFUSED[kind]}; "
                                        f"nothing imported ({out / 'cryedge.toml'} left as it was)"]
    assert not out.exists()


def test_a_password_in_a_file_url_is_masked_wherever_it_is_shown(tmp_path):
    """`file:///u:secret@x` was read as the path /u:secret@x and shown whole: in run's error line, in
    `config show` and in the summary `config check` prints (the source's name, also in status)."""
    config = tmp_path / "cryedge.toml"
    config.write_text('[source]\nuri = "file:///u:s3cr3t@x"\n')
    ran = cryedge("run", "--source", "file:///u:s3cr3t@x", timeout=120)
    assert ran.returncode != 0 and "Traceback" not in ran.stderr, ran.stderr
    assert ran.stderr.splitlines()[-1] == "cryedge: video file not found: /u:********@x", ran.stderr
    shown = cryedge("config", "show", "--config", config, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert 'path = "/u:********@x"' in shown.stdout.splitlines()
    checked = cryedge("config", "check", config, timeout=60)
    assert checked.returncode == 0 and "source file:u:********@x;" in checked.stdout, checked.stdout
    for done in (ran, shown, checked):
        assert "s3cr3t" not in done.stdout + done.stderr
