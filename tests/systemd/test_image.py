"""The pi-gen stage follows pi-gen's conventions, and the boot-partition settings reach the service.

pi-gen itself (debootstrap, qemu, loop devices) cannot run here; the stage's script is run with
pi-gen's ``on_chroot`` replaced by a recorder, and the recorded commands are then replayed against a
temporary root with ``--root`` (what they do inside the image's chroot).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge import config
from edge.errors import ConfigError
from edge.service import import_boot_config, split_password

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
STAGE = IMAGE / "stage-cryedge"
FIRSTBOOT = STAGE / "01-cryedge" / "files" / "cryedge-firstboot.service"

sys.path.insert(0, str(Path(__file__).parent))
from sandbox import unit_settings


def bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_every_script_passes_shellcheck():
    scripts = sorted(IMAGE.rglob("*.sh")) + [IMAGE / "config", STAGE / "EXPORT_IMAGE"]
    assert STAGE / "prerun.sh" in scripts and STAGE / "01-cryedge" / "00-run.sh" in scripts
    result = subprocess.run(
        ["shellcheck", *map(str, scripts)], check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout


def test_stage_follows_pi_gen_conventions():
    prerun = STAGE / "prerun.sh"
    assert os.access(prerun, os.X_OK) and "copy_previous" in prerun.read_text()
    substages = sorted(p.name for p in STAGE.iterdir() if p.is_dir())
    assert substages == ["00-packages", "01-cryedge"]
    # pi-gen runs only executable NN-run.sh scripts
    for script in STAGE.glob("*/[0-9][0-9]-run*.sh"):
        assert os.access(script, os.X_OK), script
    packages = (STAGE / "00-packages" / "00-packages-nr").read_text().split()
    packages = [p for p in packages if not p.startswith("#")]
    assert {"python3-picamera2", "python3-venv", "libgl1"} <= set(packages)
    # EXPORT_IMAGE is sourced by pi-gen: it names the image
    suffix = bash(f'USE_QEMU=0; source "{STAGE / "EXPORT_IMAGE"}"; echo "$IMG_SUFFIX"')
    assert suffix.stdout.strip() == "-cryedge"


def test_config_builds_bookworm_lite_plus_this_stage():
    values = bash(f'source "{IMAGE / "config"}"; echo "$RELEASE|$STAGE_LIST|$FIRST_USER_NAME"').stdout.strip()
    release, stage_list, first_user = values.split("|")
    assert release == "bookworm"
    assert stage_list.split() == ["stage0", "stage1", "stage2", "stage-cryedge"]
    assert first_user != "cryedge"  # that name is the service user's


# pi-gen's arm64 branch builds Raspberry Pi OS Trixie since 2025 (its build.sh: RELEASE=${RELEASE:-trixie}; its README:
# build a release from that release's branch); Bookworm's 64-bit one is bookworm-arm64.
STAND_IN_GIT = """#!/bin/sh
# git clone: no network here; a pi-gen checkout of the asked branch whose build.sh records that it ran
if [ "$1" = clone ]; then
    while [ $# -gt 1 ]; do
        case "$1" in --branch) branch=$2; shift ;; esac
        shift
    done
    echo "$branch" > "$CLONED"
    "$REAL_GIT" init -q -b "$branch" "$1"
    printf '#!/bin/sh\\necho built >> "$BUILT"\\n' > "$1/build.sh"
    chmod +x "$1/build.sh"
    mkdir -p "$1/stage2" "$1/deploy"
    exit 0
fi
exec "$REAL_GIT" "$@"
"""


def build_image(tmp_path: Path, pigen: Path) -> tuple[subprocess.CompletedProcess, str, str]:
    """image/build.sh with PIGEN_DIR=pigen and git clone stood in for: (result, branch cloned, what was built)."""
    stand_in = tmp_path / "bin"
    stand_in.mkdir(exist_ok=True)
    (stand_in / "git").write_text(STAND_IN_GIT)
    (stand_in / "git").chmod(0o755)
    cloned, built = tmp_path / "cloned.txt", tmp_path / "built.txt"
    result = bash(f'"{IMAGE / "build.sh"}"', PIGEN_DIR=str(pigen), PATH=f"{stand_in}:{os.environ['PATH']}",
                  REAL_GIT=subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip(),
                  CLONED=str(cloned), BUILT=str(built))
    read = lambda path: path.read_text().strip() if path.exists() else ""  # noqa: E731
    return result, read(cloned), read(built)


def test_the_image_is_built_from_pi_gens_branch_of_the_configs_release(tmp_path):
    """build.sh cloned pi-gen's arm64 branch, which builds Trixie now: image/config's RELEASE=bookworm got a warning
    from pi-gen and Trixie's stages, and install.sh in it a Python 3.13 the Pi's lock has no wheels for."""
    release = bash(f'source "{IMAGE / "config"}"; echo "$RELEASE"').stdout.strip()
    result, cloned, built = build_image(tmp_path, tmp_path / "pi-gen")
    assert result.returncode == 0, result.stderr
    assert (cloned, built) == (f"{release}-arm64", "built")


def test_an_earlier_checkout_of_another_pi_gen_branch_is_refused_in_one_line(tmp_path):
    """image/pi-gen cloned by an earlier build.sh (arm64, Trixie's now) was reused as it was, whatever PIGEN_REF."""
    pigen = tmp_path / "pi-gen"
    subprocess.run(["git", "init", "-q", "-b", "arm64", str(pigen)], check=True)
    (pigen / "build.sh").write_text('#!/bin/sh\necho built >> "$BUILT"\n')
    (pigen / "build.sh").chmod(0o755)
    (pigen / "stage2").mkdir()
    (pigen / "deploy").mkdir()
    result, cloned, built = build_image(tmp_path, pigen)
    assert (result.returncode, cloned, built) == (1, "", "")
    assert result.stderr.splitlines()[-1] == (
        f"image/build.sh: error: {pigen} is pi-gen's arm64 branch, not bookworm-arm64: remove it (rm -rf {pigen}) to "
        "clone bookworm-arm64, or set PIGEN_REF=arm64")


def test_stage_script_installs_cryedge_and_enables_both_units(tmp_path):
    """Run 01-cryedge/00-run.sh as pi-gen would, then replay its chroot commands with --root."""
    stage = tmp_path / "stage-cryedge"
    subprocess.run(["cp", "-a", str(STAGE), str(stage)], check=True)
    source = stage / "01-cryedge" / "files" / "cryedge"
    archive = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True)
    files = [name for name in archive.stdout.decode().split("\0") if name and (REPO / name).is_file()]
    for name in files:  # what image/build.sh's git archive puts there
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes((REPO / name).read_bytes())
        (source / name).chmod((REPO / name).stat().st_mode)
    root = tmp_path / "rootfs"
    (root / "etc/systemd/system").mkdir(parents=True)
    recorded = tmp_path / "on_chroot.txt"
    result = bash(
        f'on_chroot() {{ cat >> "{recorded}"; }}; export -f on_chroot; cd "{stage / "01-cryedge"}" && ./00-run.sh',
        ROOTFS_DIR=str(root),
    )
    assert result.returncode == 0, result.stderr
    assert (root / "opt/cryedge/src/systemd/install.sh").is_file()
    assert (root / "etc/systemd/system/cryedge-firstboot.service").read_bytes() == FIRSTBOOT.read_bytes()
    commands = [line for line in recorded.read_text().splitlines() if line.strip()]
    assert commands == [
        "/opt/cryedge/src/systemd/install.sh --source /opt/cryedge/src",
        "systemctl enable cryedge-firstboot.service",
    ]
    # the same commands as they act on the image's root (venv and models need the Pi's chroot)
    replay = bash(
        f'"{root}/opt/cryedge/src/systemd/install.sh" --root "{root}" --source "{root}/opt/cryedge/src" '
        f'--no-venv --no-models && systemctl --root="{root}" --quiet enable cryedge-firstboot.service'
    )
    assert replay.returncode == 0, replay.stderr
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == ["cryedge-firstboot.service", "cryedge.service"]


def test_firstboot_unit_runs_only_with_a_boot_file_and_before_the_service():
    settings = unit_settings(FIRSTBOOT)
    unit_text = FIRSTBOOT.read_text()
    assert "ConditionPathExists=/boot/firmware/cryedge.toml" in unit_text
    assert "Before=cryedge.service" in unit_text
    command = settings["ExecStart"][-1].split()
    assert command[:4] == ["/opt/cryedge/libexec/cryedge-start", "/opt/cryedge/venv/bin/cryedge", "service",
                           "import-boot-config"]
    assert command[command.index("--boot-file") + 1] == "/boot/firmware/cryedge.toml"
    assert command[command.index("--config-dir") + 1] == "/etc/cryedge"
    assert set(settings["ReadWritePaths"][-1].split()) == {"/etc/cryedge", "/boot/firmware"}


BOOT_TOML = """\
# written on a laptop, onto the card's boot partition
[device]
name = "Nursery"

[mqtt]
host = "192.168.1.10"   # Home Assistant
username = "cryedge"
password = "pa ss#word"
# the broker's port
port = 1883
"""


def test_boot_file_becomes_the_config_and_the_password_a_root_only_credential(tmp_path):
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text(BOOT_TOML)
    assert import_boot_config(boot, etc)
    assert not boot.exists()  # the password no longer sits on the FAT partition
    installed = (etc / "cryedge.toml").read_text()
    assert "password" not in installed
    assert "# Home Assistant" in installed and "# the broker's port" in installed  # comments kept
    password = etc / "mqtt_password"
    assert password.read_text() == "pa ss#word\n"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600
    assert stat.S_IMODE((etc / "cryedge.toml").stat().st_mode) == 0o644
    # what the service sees: the config file, and the credential systemd copies from mqtt_password
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.mqtt.host == "192.168.1.10" and loaded.mqtt.port == 1883
    assert loaded.mqtt.password.get_secret_value() == "pa ss#word"


@pytest.mark.parametrize("source", [
    '[source]\nuri = "rtsp://viewer:s3cret%40cam@192.168.1.20:554/live"   # the nursery camera\n',
    '[source]\ntype = "rtsp"\nurl = "rtsp://viewer:s3cret%40cam@192.168.1.20:554/live"\n',
    '[source]\ntype = "rtsp"\nurl = "rtsp://192.168.1.20:554/live"\nusername = "viewer"\npassword = "s3cret@cam"\n',
])
def test_a_camera_password_on_the_boot_file_becomes_a_root_only_credential_too(tmp_path, source):
    """The README's RTSP camera, its password in the URL or on its own line: it stayed in cryedge.toml, which the
    import writes 0644 for the service to read, so every user of the device could read the camera's password."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text(BOOT_TOML + source)
    assert import_boot_config(boot, etc)
    installed = (etc / "cryedge.toml").read_text()
    assert "s3cret" not in installed and "# Home Assistant" in installed
    camera = etc / "camera_password"
    assert camera.read_text() == "s3cret@cam\n" and stat.S_IMODE(camera.stat().st_mode) == 0o600
    # what the service sees: the camera's URL with its user, the password from the credential systemd copies
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.source.open_url() == "rtsp://viewer:s3cret%40cam@192.168.1.20:554/live"
    assert loaded.mqtt.password.get_secret_value() == "pa ss#word"


@pytest.mark.parametrize("microphone", [
    'url = "rtsp://listener:m1c%40pw@192.168.1.30:8554/audio"   # the crib microphone\n',
    'url = "rtsp://192.168.1.30:8554/audio"\nusername = "listener"\npassword = "m1c@pw"\n',
])
def test_a_stream_microphones_password_on_the_boot_file_becomes_a_root_only_credential(tmp_path, microphone):
    """[audio.source] type = "stream" with a password, as a camera's: into microphone_password (0600, the
    service's LoadCredential), not left in the 0644 cryedge.toml; the camera's password stays the camera's."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text(BOOT_TOML + '[source]\nuri = "rtsp://viewer:cam-pw@192.168.1.20/live"\n'
                    '[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n' + microphone)
    assert import_boot_config(boot, etc)
    installed = (etc / "cryedge.toml").read_text()
    assert "m1c" not in installed and "cam-pw" not in installed
    assert ("# the crib microphone" in installed) == ("#" in microphone)  # the user's comments kept
    credential = etc / "microphone_password"
    assert credential.read_text() == "m1c@pw\n" and stat.S_IMODE(credential.stat().st_mode) == 0o600
    assert (etc / "camera_password").read_text() == "cam-pw\n"
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.audio.source.open_url() == "rtsp://listener:m1c%40pw@192.168.1.30:8554/audio"
    assert loaded.source.open_url() == "rtsp://viewer:cam-pw@192.168.1.20/live"


def test_an_existing_config_is_kept_as_bak(tmp_path):
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    etc.mkdir()
    (etc / "cryedge.toml").write_text("# old\n")
    boot.write_text('[mqtt]\nhost = "broker"\n')
    assert import_boot_config(boot, etc)
    assert (etc / "cryedge.toml.bak").read_text() == "# old\n"
    assert tomllib.loads((etc / "cryedge.toml").read_text()) == {"mqtt": {"host": "broker"}}
    assert not (etc / "mqtt_password").exists()  # none given, none made


def test_no_boot_file_changes_nothing(tmp_path):
    assert import_boot_config(tmp_path / "absent.toml", tmp_path / "etc") is False
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mqtt\nhost = 1\n", "not valid TOML"),
        ('mqtt = { host = "b", password = "x" }\n', "write mqtt.password as one line"),
        ("[mqtt]\npassword = 5\n", "mqtt.password must be a string"),
        ('source = { uri = "rtsp://v:pw@cam/live" }\n', "write source.uri as one line"),
        ('[source]\nuri = "rtsp://v:pw@cam/live"\npassword = "other"\n', "disagree; give it once"),
        ('[audio.source]\ntype = "stream"\nurl = "rtsp://v:pw@mic/a"\npassword = "other"\n',
         "audio.source.password and the password in the microphone's URL disagree"),
    ],
)
def test_a_boot_file_that_cannot_be_split_stays_where_it_is(tmp_path, text, message):
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    boot.write_text(text)
    with pytest.raises(ConfigError, match=message):
        import_boot_config(boot, etc)
    assert boot.read_text() == text
    assert not (etc / "mqtt_password").exists() and not (etc / "camera_password").exists()


@pytest.mark.parametrize(("text", "message"), [
    ('[alarm]\nhold_secs = 3\n', "alarm.hold_secs: unknown key (did you mean alarm.hold_seconds?)"),
    ('[alarm]\non_threshold = 1.5\n', "alarm.on_threshold:"),
    ('[source]\nuri = "ftp://cam/live"\n', "source: uri ftp://cam/live: no source type reads ftp://"),
])
def test_a_boot_file_the_service_could_not_start_with_is_refused_and_the_config_kept(tmp_path, text, message):
    """A bad key or value was installed as /etc/cryedge/cryedge.toml (the old one moved to .bak) and the boot
    file removed: the service then stopped at every start on the config error, a restart loop, the working
    config gone. Refused, in one line naming the key; the installed config and the boot file stay as they were."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc"
    boot.parent.mkdir()
    etc.mkdir()
    (etc / "cryedge.toml").write_text('[mqtt]\nhost = "broker"\n')
    boot.write_text(f'[mqtt]\nhost = "new"\npassword = "pw"\n{text}')
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
         "--config-dir", str(etc)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cryedge: {boot}: {message}")
    assert line.endswith(f"; not installed ({etc / 'cryedge.toml'} left as it was)")
    assert "pw" not in result.stderr
    assert sorted(p.name for p in etc.iterdir()) == ["cryedge.toml"]  # no .bak, no password, no temporary file
    assert (etc / "cryedge.toml").read_text() == '[mqtt]\nhost = "broker"\n'
    assert boot.read_text().endswith(text)


def test_password_outside_mqtt_is_left_alone():
    text = '[other]\npassword = "a"\n[mqtt]\nhost = "b"\n'
    assert split_password(text) == (text, None)


def test_the_command_the_firstboot_unit_runs(tmp_path):
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    boot.write_text(BOOT_TOML)
    cryedge = Path(sys.executable).with_name("cryedge")
    start = REPO / "systemd" / "cryedge-start"  # as the unit runs it: through the check of the venv
    result = subprocess.run(
        [str(start), str(cryedge), "service", "import-boot-config", "--boot-file", str(boot), "--config-dir", str(etc)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (etc / "mqtt_password").read_text() == "pa ss#word\n" and not boot.exists()


def _files_of(folder: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (p.read_text() if p.is_file() else "<folder>", stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.iterdir())}


NEW_BOOT_TOML = ('[mqtt]\nhost = "new-broker"\npassword = "new-mqtt-pw"\n'
                 '[source]\nuri = "rtsp://viewer:new-cam-pw@192.168.1.20/live"\n')


@pytest.mark.parametrize("fault", ["full after one file", "read-only", "a folder in the way"])
def test_an_import_that_cannot_write_a_password_changes_nothing(tmp_path, fault):
    """The config was installed (the old one moved to .bak) before the passwords were written: a full disk, a
    read-only /etc or a folder where camera_password goes left the new cryedge.toml without the passwords it
    names (and a temporary file), the old one gone. Now nothing changes, one line names the file, exit 1."""
    from filesystems import Tmpfs

    boot = tmp_path / "boot" / "cryedge.toml"
    boot.parent.mkdir()
    boot.write_text(NEW_BOOT_TOML)
    with Tmpfs(tmp_path / "etc", size="256k") as disk:
        etc = disk.path
        (etc / "cryedge.toml").write_text('[mqtt]\nhost = "broker"\n')
        (etc / "mqtt_password").write_text("old-mqtt-pw\n")
        os.chmod(etc / "mqtt_password", 0o600)
        if fault == "a folder in the way":
            (etc / "camera_password").mkdir()
        before = _files_of(etc)
        if fault == "full after one file":
            disk.fill()
            filler = etc / "filler"
            os.truncate(filler, filler.stat().st_size - 4096)  # room for one small file, a tmpfs page
            before = _files_of(etc)
        elif fault == "read-only":
            disk.read_only()
        result = subprocess.run(
            [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
             "--config-dir", str(etc)], check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        [line] = result.stderr.splitlines()
        reason = {"full after one file": "No space left on device", "read-only": "Read-only file system",
                  "a folder in the way": "a folder is in the way"}[fault]
        named = etc / ("mqtt_password" if fault == "read-only" else "camera_password")
        assert line == f"cryedge: cannot write {named}: {reason}; nothing imported ({etc} left as it was, {boot} kept)"
        assert "pw" not in result.stderr
        assert _files_of(etc) == before  # no new config, no .bak, no temporary, the old password where it was
        assert boot.read_text() == NEW_BOOT_TOML
    # with room, the same boot file goes in whole
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
         "--config-dir", str(tmp_path / "etc2")], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "etc2" / "camera_password").read_text() == "new-cam-pw\n" and not boot.exists()


@pytest.mark.parametrize(("content", "message"), [
    (b'[mqtt]\nhost = "caf\xe9"\npassword = "pw"\n', "not UTF-8 text: byte 0xe9 on line 2 (TOML files are UTF-8; "
                                                     "re-save it as UTF-8)"),
    (b"a = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "not valid TOML (arrays or tables nested too deeply to read)"),
])
def test_a_boot_file_that_cannot_be_read_as_toml_is_one_line_and_stays(tmp_path, content, message):
    """A boot file saved in Latin-1 (or nested past Python's recursion limit) raised a traceback from read_text
    (tomllib) at first boot. Now the config's exit code, one line, nothing installed, the file left to correct."""
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    boot.write_bytes(content)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
         "--config-dir", str(etc)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.splitlines()[0].startswith(f"cryedge: {boot}: {message}")
    assert not etc.exists() and boot.read_bytes() == content


def test_a_boot_file_saved_by_notepad_is_imported(tmp_path):
    """Notepad's "UTF-8" begins with a byte order mark and ends lines with CRLF: the import refused it as
    "not valid TOML (Invalid statement (at line 1, column 1))", a file that looks right to whoever wrote it."""
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    boot.write_bytes(b'\xef\xbb\xbf[mqtt]\r\nhost = "192.168.1.10"\r\nusername = "cryedge"\r\npassword = "pa ss"\r\n')
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
         "--config-dir", str(etc)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (etc / "mqtt_password").read_text() == "pa ss\n" and not boot.exists()
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.mqtt.host == "192.168.1.10" and loaded.mqtt.password.get_secret_value() == "pa ss"


def test_a_boot_file_that_is_a_folder_is_one_sentence_and_nothing_changes(tmp_path):
    """A folder named cryedge.toml on the boot partition (a laptop's unzip) printed a bare "Is a directory: PATH"."""
    boot, etc = tmp_path / "cryedge.toml", tmp_path / "etc"
    boot.mkdir()
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cryedge")), "service", "import-boot-config", "--boot-file", str(boot),
         "--config-dir", str(etc)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"cryedge: {boot}: is a folder, not the TOML file of settings expected "
                                          f"there; nothing imported ({etc / 'cryedge.toml'} left as it was)"]
    assert not etc.exists() and boot.is_dir()


def test_a_new_boot_file_without_a_camera_or_microphone_password_removes_the_old_ones(tmp_path):
    """A second import for another camera left the first camera's password in /etc/cryedge, which systemd's
    LoadCredential still handed over: the new camera got the old password and refused it (401), no hint why.
    The boot file describes the whole setup; the MQTT password it no longer gives goes too (test below)."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text(BOOT_TOML + '[source]\nuri = "rtsp://viewer:old-cam-pw@192.168.1.20/live"\n'
                    '[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                    'url = "rtsp://listener:old-mic-pw@192.168.1.30/audio"\n')
    assert import_boot_config(boot, etc)
    assert {"camera_password", "microphone_password"} <= set(os.listdir(etc))
    boot.write_text('[mqtt]\nhost = "192.168.1.10"\nusername = "cryedge"\n'
                    '[source]\nuri = "rtsp://viewer@192.168.1.21/live"\n[audio]\nenabled = true\n'
                    '[audio.source]\ntype = "stream"\nurl = "rtsp://listener@192.168.1.31/audio"\n')
    assert import_boot_config(boot, etc)
    assert not (etc / "camera_password").exists() and not (etc / "microphone_password").exists()
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.source.open_url() == "rtsp://viewer@192.168.1.21/live"
    assert loaded.audio.source.open_url() == "rtsp://listener@192.168.1.31/audio"


def test_a_new_boot_file_without_the_mqtt_password_removes_the_one_an_import_wrote(tmp_path, caplog):
    """A parent who deleted [mqtt] password from the boot file (the broker now takes none, or is another one) kept
    the imported password on the device for ever: LoadCredential handed it on, and the daemon sent it to whichever
    broker the new file names. The import removes the password it wrote, as it does a camera's; one the boot file
    names as [mqtt] password_file stays."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text(BOOT_TOML)
    assert import_boot_config(boot, etc)
    assert (etc / "mqtt_password").read_text() == "pa ss#word\n"
    caplog.set_level("INFO", logger="edge.service")
    boot.write_text(BOOT_TOML.replace('password = "pa ss#word"\n', ""))
    assert import_boot_config(boot, etc)
    assert not (etc / "mqtt_password").exists()
    assert f"removed {etc / 'mqtt_password'}: an earlier boot file gave it" in caplog.text and "pa ss" not in caplog.text
    assert not (etc / "imported.sha256").exists()  # nothing imported is left on the device
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.mqtt.host == "192.168.1.10" and loaded.mqtt.password is None
    # named by the new file, the imported one is the setup's password: kept
    boot.write_text(BOOT_TOML)
    assert import_boot_config(boot, etc)
    boot.write_text(f'[mqtt]\nhost = "192.168.1.10"\nusername = "cryedge"\npassword_file = "{etc / "mqtt_password"}"\n')
    assert import_boot_config(boot, etc)
    loaded = config.load_config(etc / "cryedge.toml", environ={})
    assert loaded.mqtt.password.get_secret_value() == "pa ss#word"


def test_an_mqtt_password_install_sh_put_there_outlives_a_boot_file_that_does_not_give_one(tmp_path, caplog):
    """systemd/install.sh --mqtt-password-file writes /etc/cryedge/mqtt_password, not an import: a boot file
    without a password (a new camera, say) keeps it, and the journal says why."""
    root, given = tmp_path / "root", tmp_path / "broker-password"
    root.mkdir()
    given.write_text("from-install-sh\n")
    install = subprocess.run(["bash", str(REPO / "systemd" / "install.sh"), "--root", str(root), "--no-venv",
                              "--no-models", "--no-enable", "--mqtt-password-file", str(given)],
                             check=False, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    etc, boot = root / "etc" / "cryedge", root / "boot" / "firmware" / "cryedge.toml"
    boot.parent.mkdir(parents=True)
    boot.write_text('[mqtt]\nhost = "192.168.1.10"\nusername = "cryedge"\n[source]\nuri = "rtsp://viewer:cam@192.168.1.20/live"\n')
    caplog.set_level("INFO", logger="edge.service")
    assert import_boot_config(boot, etc)
    assert (etc / "mqtt_password").read_text() == "from-install-sh\n"
    assert f"kept {etc / 'mqtt_password'}: put there by hand or by install.sh --mqtt-password-file" in caplog.text
    boot.write_text('[mqtt]\nhost = "192.168.1.10"\nusername = "cryedge"\n')  # and again: still not the import's
    assert import_boot_config(boot, etc)
    assert (etc / "mqtt_password").read_text() == "from-install-sh\n" and not (etc / "camera_password").exists()
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.mqtt.password.get_secret_value() == "from-install-sh"


def _hand_placed(etc: Path, name: str, secret: str) -> Path:
    """A password put in place as docs/service.md says: by hand, as root, mode 0600."""
    etc.mkdir(parents=True, exist_ok=True)
    path = etc / name
    path.write_text(secret + "\n")
    os.chmod(path, 0o600)
    return path


def test_a_password_put_there_by_hand_outlives_a_boot_file_that_does_not_give_one(tmp_path, caplog):
    """docs/service.md says to put the camera's password in /etc/cryedge/camera_password by hand; a later boot file
    (a new broker, say) naming the camera's user but not its password removed it, with any microphone's: after the
    reboot the camera refused the monitor (401). Only what an earlier import wrote is another setup's to remove."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    camera = _hand_placed(etc, "camera_password", "by-hand-cam")
    caplog.set_level("INFO", logger="edge.service")
    microphone = _hand_placed(etc, "microphone_password", "by-hand-mic")
    boot.write_text('[mqtt]\nhost = "new-broker"\n[source]\nuri = "rtsp://viewer@192.168.1.20/live"\n'
                    '[audio]\nenabled = true\n[audio.source]\ntype = "stream"\nurl = "rtsp://listener@192.168.1.30/a"\n')
    assert import_boot_config(boot, etc)
    assert camera.read_text() == "by-hand-cam\n" and stat.S_IMODE(camera.stat().st_mode) == 0o600
    assert microphone.read_text() == "by-hand-mic\n"
    assert f"kept {camera}: put there by hand, not by an import" in caplog.text and "by-hand" not in caplog.text
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.source.open_url() == "rtsp://viewer:by-hand-cam@192.168.1.20/live"
    assert loaded.audio.source.open_url() == "rtsp://listener:by-hand-mic@192.168.1.30/a"


def test_an_imported_password_replaced_by_hand_is_the_users_and_stays(tmp_path):
    """An import wrote the camera's password; the user then put another there by hand (the camera's new one):
    a later boot file without one keeps it, as it keeps any password the user placed."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text('[source]\nuri = "rtsp://viewer:imported-pw@192.168.1.20/live"\n')
    assert import_boot_config(boot, etc)
    record = etc / "imported.sha256"  # what the import wrote, root-only, no password in it
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and "imported-pw" not in record.read_text()
    assert subprocess.run(["sha256sum", "--check", "--quiet", record.name], cwd=etc, check=False).returncode == 0
    _hand_placed(etc, "camera_password", "changed-by-hand")
    boot.write_text('[mqtt]\nhost = "new-broker"\n[source]\nuri = "rtsp://viewer@192.168.1.20/live"\n')
    assert import_boot_config(boot, etc)
    assert (etc / "camera_password").read_text() == "changed-by-hand\n"
    # and a boot file that gives one replaces it: the file says which password the camera takes now
    boot.write_text('[source]\nuri = "rtsp://viewer:given-pw@192.168.1.20/live"\n')
    assert import_boot_config(boot, etc)
    assert (etc / "camera_password").read_text() == "given-pw\n"
    boot.write_text('[source]\nuri = "rtsp://viewer@192.168.1.21/live"\n')  # another camera, none given: removed
    assert import_boot_config(boot, etc)
    assert not (etc / "camera_password").exists()


def test_a_boot_file_that_names_the_password_file_keeps_it(tmp_path):
    """A boot file whose [source] password_file is the camera_password an earlier import wrote (it gives no
    password of its own, it points at the one there): the import removed it, and the service then stopped on
    'cannot read' at every start. Named, it stays."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    boot.write_text('[source]\nuri = "rtsp://viewer:imported-pw@192.168.1.20/live"\n')
    assert import_boot_config(boot, etc)
    boot.write_text(f'[mqtt]\nhost = "new-broker"\n[source]\nuri = "rtsp://viewer@192.168.1.20/live"\n'
                    f'password_file = "{etc / "camera_password"}"\n')
    assert import_boot_config(boot, etc)
    loaded = config.load_config(etc / "cryedge.toml", environ={})
    assert loaded.source.open_url() == "rtsp://viewer:imported-pw@192.168.1.20/live"


@pytest.mark.parametrize("table", ["mqtt", "source", "audio.source"])
def test_a_relative_password_file_beside_the_boot_file_is_moved_like_a_password_line(tmp_path, table):
    """`password_file = "..._password"` with that file next to cryedge.toml on the boot partition: the import left the
    line as it was, so the installed config looked for it in /etc/cryedge (the service stopped at every start on
    "cannot read", exit 3, never restarted) and the password stayed on the card. Now it is read from beside the boot
    file, as every relative path in a config file is, goes into the credential, and leaves the card."""
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    sections = {"mqtt": '[mqtt]\nhost = "192.168.1.10"\nusername = "cryedge"\n',
                "source": '[source]\ntype = "rtsp"\nurl = "rtsp://192.168.1.20/live"\nusername = "viewer"\n',
                "audio.source": '[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
                                'url = "rtsp://192.168.1.30/audio"\nusername = "listener"\n'}
    credential = {"mqtt": "mqtt_password", "source": "camera_password", "audio.source": "microphone_password"}[table]
    boot.write_text(sections[table] + 'password_file = "secret.txt"   # beside this file\n')
    (boot.parent / "secret.txt").write_text("on the card\r\n")
    assert import_boot_config(boot, etc)
    assert not boot.exists() and not (boot.parent / "secret.txt").exists()  # nothing left on the card
    installed = (etc / "cryedge.toml").read_text()
    assert "password_file" not in installed and "secret.txt" not in installed
    assert (etc / credential).read_text() == "on the card\n"
    assert stat.S_IMODE((etc / credential).stat().st_mode) == 0o600
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    section = {"mqtt": loaded.mqtt, "source": loaded.source, "audio.source": loaded.audio.source}[table]
    assert section.password.get_secret_value() == "on the card"


def test_a_relative_password_file_not_beside_the_boot_file_is_refused_saying_where_to_look(tmp_path):
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    etc.mkdir(parents=True)
    (etc / "mqtt_password").write_text("installed by hand\n")
    boot.write_text('[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "mqtt_password"\n')
    with pytest.raises(ConfigError) as refused:
        import_boot_config(boot, etc)
    assert str(refused.value) == (
        f"{boot}: mqtt.password_file: mqtt_password is not beside the boot file ({boot.parent / 'mqtt_password'}): a "
        f"relative password_file there names a file next to it, which the import moves into {etc}; for one already in "
        f"{etc}, give its full path ({etc / 'mqtt_password'})")
    assert boot.exists() and not (etc / "cryedge.toml").exists()
    boot.write_text(f'[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "{etc / "mqtt_password"}"\n')  # as it says
    assert import_boot_config(boot, etc)
    loaded = config.load_config(etc / "cryedge.toml", environ={})
    assert loaded.mqtt.password.get_secret_value() == "installed by hand"


def test_the_image_and_the_readmes_pi_steps_install_every_package_setup_installs():
    """requirements/apt-runtime.txt is what `setup.sh --runtime` installs (what the wheels link, and sound): the
    image's package list and the README's apt line on a Pi must hold all of it, or an image boots a service that
    dies on a missing libEGL (exit 8) that setup.sh on the same Pi would have installed."""
    def listed(text: str) -> set[str]:
        return {word for line in text.splitlines() if not line.lstrip().startswith("#") for word in line.split()}

    runtime = listed((REPO / "requirements" / "apt-runtime.txt").read_text())
    image = listed((STAGE / "00-packages" / "00-packages-nr").read_text())
    readme_line = next(line for line in (REPO / "README.md").read_text().splitlines()
                       if line.startswith("sudo apt install python3-picamera2"))
    assert runtime and runtime <= image, runtime - image
    assert runtime <= set(readme_line.split()), runtime - set(readme_line.split())
    assert {"python3-picamera2"} <= image  # the venv's picamera2 comes from apt, never from PyPI


def test_a_password_file_named_by_its_full_path_on_the_boot_partition_leaves_the_card_too(tmp_path):
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    (boot.parent / "mqtt.txt").write_text("on the card\n")
    boot.write_text(f'[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "{boot.parent / "mqtt.txt"}"\n')
    assert import_boot_config(boot, etc)
    assert not (boot.parent / "mqtt.txt").exists() and "password_file" not in (etc / "cryedge.toml").read_text()
    loaded = config.load_config(etc / "cryedge.toml", environ={"CREDENTIALS_DIRECTORY": str(etc)})
    assert loaded.mqtt.password.get_secret_value() == "on the card"


def test_a_password_line_and_a_password_file_beside_the_boot_file_that_disagree_are_refused(tmp_path):
    boot, etc = tmp_path / "boot" / "cryedge.toml", tmp_path / "etc" / "cryedge"
    boot.parent.mkdir()
    (boot.parent / "pw").write_text("from the file\n")
    boot.write_text('[mqtt]\nhost = "b"\nusername = "u"\npassword = "from the line"\npassword_file = "pw"\n')
    with pytest.raises(ConfigError, match=r"mqtt.password_file and the password given in the file disagree; give it once"):
        import_boot_config(boot, etc)
    assert boot.exists() and (boot.parent / "pw").exists() and not etc.exists()


def checkout_with_an_image_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A git checkout holding image/, a lock and pyproject.toml, and a pi-gen stand-in whose build.sh copies the
    lock that reached the stage (pi-gen itself cannot run here). Returns (checkout, pi-gen, the copied lock)."""
    checkout = tmp_path / "checkout"
    (checkout / "requirements").mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(IMAGE), str(checkout)], check=True)
    (checkout / "requirements" / "aarch64.txt").write_text("numpy==1.26.4\n")
    (checkout / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (checkout / "README.md").write_text("cryedge\n")
    git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    pigen = tmp_path / "pi-gen"
    (pigen / ".git").mkdir(parents=True)
    (pigen / "stage2").mkdir()
    built = tmp_path / "built-with.txt"
    (pigen / "build.sh").write_text(f'#!/bin/sh\ncp stage-cryedge/01-cryedge/files/cryedge/requirements/aarch64.txt '
                                    f'"{built}"\nmkdir -p deploy\n')
    (pigen / "build.sh").chmod(0o755)
    return checkout, pigen, built


def test_an_image_is_not_built_from_a_lock_that_is_not_committed(tmp_path):
    """requirements/refresh.sh moved a pin and the image was built before a commit: build.sh archives HEAD, so the
    image installed the old lock without a word. Now the build stops, naming the file; committed, it goes in."""
    checkout, pigen, built = checkout_with_an_image_dir(tmp_path)
    (checkout / "requirements" / "aarch64.txt").write_text("numpy==1.26.5\n")
    build = [str(checkout / "image" / "build.sh")]
    result = subprocess.run(build, capture_output=True, text=True, timeout=120, env={**os.environ, "PIGEN_DIR": str(pigen)})
    assert result.returncode == 1 and not built.exists()
    assert result.stderr == ("image/build.sh: error: not committed: requirements/aarch64.txt; the image gets HEAD's, "
                             "so commit them first\n")
    subprocess.run(["git", "-C", str(checkout), "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit",
                    "-qam", "refresh"], check=True)
    (checkout / "README.md").write_text("cryedge, edited\n")
    result = subprocess.run(build, capture_output=True, text=True, timeout=120, env={**os.environ, "PIGEN_DIR": str(pigen)})
    assert result.returncode == 0, result.stderr
    assert built.read_text() == "numpy==1.26.5\n"
    assert result.stderr == ("image/build.sh: warning: 1 uncommitted changes are not in the image, which gets HEAD "
                             "(git status)\n"), result.stderr
