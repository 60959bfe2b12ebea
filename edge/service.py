"""``cryedge service``: install the systemd service, and take settings from the boot partition.

- ``cryedge service install [--root DIR] ...`` runs ``systemd/install.sh`` of the checkout this
  package runs from (the script is the one implementation; this is a convenience).
- ``cryedge service import-boot-config [--boot-file F] [--config-dir D]`` is what the image's
  ``cryedge-firstboot.service`` runs: a ``cryedge.toml`` the user dropped on the boot partition (FAT,
  readable on any computer) becomes ``/etc/cryedge/cryedge.toml``; its ``[mqtt] password`` is moved
  into ``/etc/cryedge/mqtt_password`` (0600, handed to the service with ``LoadCredential=``), and the
  file is removed from the boot partition, so the password does not stay on a card anyone can read.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tomllib
from pathlib import Path

from edge.errors import ConfigError, CryedgeError

log = logging.getLogger(__name__)

BOOT_CONFIG = Path("/boot/firmware/cryedge.toml")
CONFIG_DIR = Path("/etc/cryedge")
PASSWORD_FILE_NAME = "mqtt_password"  # as LoadCredential=mqtt_password:... in systemd/cryedge.service

_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_PASSWORD_KEY = re.compile(r"^\s*password\s*=")


def split_password(text: str, where: str = "boot config") -> tuple[str, str | None]:
    """(the TOML text without ``[mqtt] password``, the password or None).

    Works on lines so that the user's comments survive; the result is parsed again and must
    equal the original minus the password, or a ConfigError says why.
    """
    try:
        original = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: not valid TOML ({error})") from error
    password = original.get("mqtt", {}).get("password")
    if password is None:
        return text, None
    if not isinstance(password, str):
        raise ConfigError(f"{where}: mqtt.password must be a string")
    kept, table = [], None
    for line in text.splitlines(keepends=True):
        header = _TABLE_HEADER.match(line)
        if header:
            table = header.group(1)
        if table == "mqtt" and _PASSWORD_KEY.match(line):
            continue
        kept.append(line)
    stripped = "".join(kept)
    expected = {**original, "mqtt": {k: v for k, v in original["mqtt"].items() if k != "password"}}
    try:
        again = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        again = None
    if again != expected:
        raise ConfigError(f'{where}: write mqtt.password as one line, password = "...", in the [mqtt] table')
    return stripped, password


def import_boot_config(boot_file: Path = BOOT_CONFIG, config_dir: Path = CONFIG_DIR) -> bool:
    """Moves ``boot_file`` into ``config_dir`` (password apart); False when there is no such file.

    An existing ``cryedge.toml`` is kept as ``cryedge.toml.bak``. The boot file is removed only
    after the new files are on disk.
    """
    if not boot_file.exists():
        return False
    text = boot_file.read_text(encoding="utf-8")
    config_text, password = split_password(text, str(boot_file))
    config_dir.mkdir(parents=True, exist_ok=True)
    target = config_dir / "cryedge.toml"
    if target.exists():
        os.replace(target, target.with_name("cryedge.toml.bak"))
    _write(target, config_text, 0o644)
    if password is not None:
        _write(config_dir / PASSWORD_FILE_NAME, password + "\n", 0o600)
    boot_file.unlink()
    _sync_directory(boot_file.parent)
    log.info(
        "installed %s%s; removed %s",
        target,
        " and the MQTT password" if password is not None else "",
        boot_file,
    )
    return True


def _write(path: Path, text: str, mode: int) -> None:
    """Writes atomically with ``mode`` from the start (the password is never readable by others)."""
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (FAT on old kernels) refuse fsync on a directory
    finally:
        os.close(fd)


def install_script() -> Path:
    """``systemd/install.sh`` of the checkout; a wheel install has none."""
    script = Path(__file__).resolve().parents[1] / "systemd" / "install.sh"
    if not script.is_file():
        raise CryedgeError(
            "systemd/install.sh is not here (this cryedge is not a source checkout): "
            "clone the repository and run sudo systemd/install.sh"
        )
    return script


def _install(args) -> int:
    command = [str(install_script())]
    if args.root:
        command += ["--root", args.root]
    for flag in ("no_venv", "no_models", "no_enable"):
        if getattr(args, flag):
            command.append("--" + flag.replace("_", "-"))
    if args.mqtt_password_file:
        command += ["--mqtt-password-file", args.mqtt_password_file]
    return subprocess.run(command, check=False).returncode


def _import_boot_config(args) -> int:
    if not import_boot_config(Path(args.boot_file), Path(args.config_dir)):
        log.info("no %s: nothing to import", args.boot_file)
    return 0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "service", help="install the systemd service; import boot-partition settings"
    )
    commands = parser.add_subparsers(dest="service_command", metavar="SUBCOMMAND", required=True)

    install = commands.add_parser("install", help="run systemd/install.sh (venv, config, user, unit, models)")
    install.add_argument("--root", help="install into this root file system (an image) instead of /")
    install.add_argument("--no-venv", action="store_true", help="do not create or update /opt/cryedge/venv")
    install.add_argument("--no-models", action="store_true", help="do not copy or fetch models")
    install.add_argument("--no-enable", action="store_true", help="do not enable the service")
    install.add_argument("--mqtt-password-file", help="install this file as /etc/cryedge/mqtt_password")
    install.set_defaults(handler=_install)

    boot = commands.add_parser(
        "import-boot-config",
        help="move cryedge.toml from the boot partition to /etc/cryedge, its MQTT password to a 0600 file",
    )
    boot.add_argument("--boot-file", default=str(BOOT_CONFIG), help=f"default: {BOOT_CONFIG}")
    boot.add_argument("--config-dir", default=str(CONFIG_DIR), help=f"default: {CONFIG_DIR}")
    boot.set_defaults(handler=_import_boot_config)
