"""``cryedge service``: install the systemd service, and take settings from the boot partition.

- ``cryedge service install [--root DIR] ...`` runs ``systemd/install.sh`` of the checkout this
  package runs from (the script is the one implementation; this is a convenience).
- ``cryedge service import-boot-config [--boot-file F] [--config-dir D]`` is what the image's
  ``cryedge-firstboot.service`` runs: a ``cryedge.toml`` the user dropped on the boot partition (FAT,
  readable on any computer) becomes ``/etc/cryedge/cryedge.toml``; its ``[mqtt] password`` is moved
  into ``/etc/cryedge/mqtt_password`` (0600, handed to the service with ``LoadCredential=``), a camera's
  password (``[source] password``, or in its ``uri``/``url``) into ``/etc/cryedge/camera_password`` likewise,
  a stream microphone's (``[audio.source]``) into ``/etc/cryedge/microphone_password``,
  and the file is removed from the boot partition, so no password stays on a card anyone can read, nor in
  ``/etc/cryedge/cryedge.toml``, which every user of the device can read.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import subprocess
import tomllib
from pathlib import Path

from edge.errors import ConfigError, CryedgeError, output_through_a_file

log = logging.getLogger(__name__)

BOOT_CONFIG = Path("/boot/firmware/cryedge.toml")
CONFIG_DIR = Path("/etc/cryedge")
PASSWORD_FILE_NAME = "mqtt_password"  # as LoadCredential=mqtt_password:... in systemd/cryedge.service
CAMERA_PASSWORD_FILE_NAME = "camera_password"  # LoadCredential=-camera_password:...
MICROPHONE_PASSWORD_FILE_NAME = "microphone_password"  # LoadCredential=-microphone_password:...
# what the import wrote, as ``sha256sum`` lists files (``sha256sum -c`` there says which still hold it), root-only:
# a password file that holds what an import wrote is the import's to remove; any other was put there by hand
IMPORT_RECORD_NAME = "imported.sha256"

_TABLE_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_PASSWORD_KEY = re.compile(r"^\s*password\s*=")
_PASSWORD_FILE_KEY = re.compile(r"^\s*password_file\s*=")


def split_password(text: str, where: str = "boot config", table_name: str = "mqtt") -> tuple[str, str | None]:
    """(the TOML text without ``[table_name] password``, the password or None).

    Works on lines so that the user's comments survive; the result is parsed again and must
    equal the original minus the password, or a ConfigError says why.
    """
    original = _parse(text, where)
    section = _table(original, table_name)
    password = section.get("password") if isinstance(section, dict) else None
    if password is None:
        return text, None
    if not isinstance(password, str):
        raise ConfigError(f"{where}: {table_name}.password must be a string")
    stripped = _without_key(text, table_name, _PASSWORD_KEY)
    expected = _with_table(original, table_name, {k: v for k, v in section.items() if k != "password"})
    if _parse_or_none(stripped) != expected:
        raise ConfigError(f'{where}: write {table_name}.password as one line, password = "...", in the [{table_name}] table')
    return stripped, password


def _without_key(text: str, table_name: str, key: re.Pattern) -> str:
    """``text`` without the lines of ``[table_name]`` that ``key`` matches; the other lines, comments too, as they were."""
    kept, table = [], None
    for line in text.splitlines(keepends=True):
        header = _TABLE_HEADER.match(line)
        if header:
            table = header.group(1)
        if table == table_name and key.match(line):
            continue
        kept.append(line)
    return "".join(kept)


def split_password_file(text: str, boot_file: Path, config_dir: Path, table_name: str = "mqtt"
                        ) -> tuple[str, str | None, Path | None]:
    """(the TOML text without ``[table_name] password_file``, the password read from it, the file) when the boot
    file's ``password_file`` is a file in the boot file's folder; else (``text``, None, None).

    A relative ``password_file`` means, as in any config file, beside that file: on the boot partition (FAT,
    readable by anyone who holds the card), where the installed config, in ``config_dir``, would not find it. It is
    moved like a ``password = "..."`` line: into the credential, the file deleted after the import. One that is not
    there is refused, in one line that says where it was looked for and how to name one already in ``config_dir``.
    """
    where = str(boot_file)
    original = _parse(text, where)
    section = _table(original, table_name)
    given = section.get("password_file") if isinstance(section, dict) else None
    if not isinstance(given, str):
        return text, None, None
    try:
        path = Path(given).expanduser()
    except RuntimeError:  # ~name of no user: load_config says so, naming the key
        return text, None, None
    folder = boot_file.parent
    beside = folder / path if not path.is_absolute() else path if path.parent.resolve() == folder.resolve() else None
    if beside is None:
        return text, None, None
    key = f"{table_name}.password_file"
    if not beside.exists():
        if path.is_absolute():
            return text, None, None  # load_config says it cannot be read
        raise ConfigError(f"{where}: {key}: {given} is not beside the boot file ({beside}): a relative password_file "
                          f"there names a file next to it, which the import moves into {config_dir}; for one already "
                          f"in {config_dir}, give its full path ({config_dir / path.name})")
    from edge.config import settings_text

    password = settings_text(beside, f"{where}: {key}: cannot read {beside}").rstrip("\r\n")
    stripped = _without_key(text, table_name, _PASSWORD_FILE_KEY)
    expected = _with_table(original, table_name, {k: v for k, v in section.items() if k != "password_file"})
    if _parse_or_none(stripped) != expected:
        raise ConfigError(f'{where}: write {key} as one line, password_file = "...", in the [{table_name}] table')
    return stripped, password, beside


def split_url_password(text: str, where: str = "boot config", table_name: str = "source") -> tuple[str, str | None]:
    """(the TOML text with the password taken out of ``[table_name] uri`` or ``url``, that password or None).

    ``rtsp://viewer:pw@cam/live`` becomes ``rtsp://viewer@cam/live``, on its own line, comments kept.
    """
    from edge.config import split_credentials, split_userinfo

    original = _parse(text, where)
    source = _table(original, table_name)
    for key in ("uri", "url") if isinstance(source, dict) else ():
        value = source.get(key)
        userinfo = split_userinfo(value)[1] if isinstance(value, str) else None
        if userinfo is None or ":" not in userinfo:
            continue
        password = split_credentials(value)[2]
        user = userinfo.partition(":")[0]
        kept_user = f"{user}@" if user else ""
        bare = value.replace(f"{userinfo}@", kept_user, 1)
        kept, table = [], None
        for line in text.splitlines(keepends=True):
            header = _TABLE_HEADER.match(line)
            if header:
                table = header.group(1)
            if table == table_name and re.match(rf"^\s*{key}\s*=", line):
                line = line.replace(f"{userinfo}@", kept_user, 1)
            kept.append(line)
        stripped = "".join(kept)
        if _parse_or_none(stripped) != _with_table(original, table_name, {**source, key: bare}):
            raise ConfigError(f'{where}: write {table_name}.{key} as one line, {key} = "...", in the [{table_name}] table, '
                              f'or the URL without its password and the password as password = "..."')
        return stripped, password
    return text, None


def _table(data: dict, name: str):
    """The table ``name`` (dotted: ``audio.source``) of parsed TOML ``data``; None when it is not there."""
    for part in name.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _with_table(data: dict, name: str, table: dict) -> dict:
    """``data`` with its table ``name`` (dotted) replaced by ``table``."""
    head, _, rest = name.partition(".")
    return {**data, head: _with_table(data.get(head, {}), rest, table) if rest else table}


def split_stream_password(text: str, where: str, table_name: str, what: str) -> tuple[str, str | None]:
    """(the TOML text without the password of the stream in ``[table_name]``, that password or None): given
    as ``password``, in its URL, or both, agreeing. ``what`` names it in the error."""
    text, password = split_password(text, where, table_name)
    text, in_url = split_url_password(text, where, table_name)
    if password is not None and in_url is not None and password != in_url:
        raise ConfigError(f"{where}: {table_name}.password and the password in the {what}'s URL disagree; give it once")
    return text, password if password is not None else in_url


def _parse(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: not valid TOML ({error})") from error
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML (arrays or tables nested too deeply to read)") from None


def _parse_or_none(text: str) -> dict | None:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None


def import_boot_config(boot_file: Path = BOOT_CONFIG, config_dir: Path = CONFIG_DIR) -> bool:
    """Moves ``boot_file`` into ``config_dir`` (password apart); False when there is no such file.

    All or nothing: every file is written beside its place before any is put in place, so a full disk,
    a read-only ``/etc`` or a folder in the way leaves the installed config and its passwords as they
    were, and the boot file where it is. An existing ``cryedge.toml`` is kept as ``cryedge.toml.bak``.
    The boot file is removed only after the new files are on disk. A password (MQTT, camera or microphone) the
    new file does not give is removed only when an earlier import wrote it (``IMPORT_RECORD_NAME``), never one
    the user put there by hand or ``install.sh --mqtt-password-file`` did.
    """
    if not boot_file.exists():
        return False
    where = str(boot_file)
    from edge.config import read_settings_file, toml_text

    try:
        raw = read_settings_file(boot_file)
    except IsADirectoryError:  # it said "Is a directory: PATH", not what was expected there
        raise ConfigError(f"{where}: is a folder, not the TOML file of settings expected there; "
                          f"nothing imported ({config_dir / 'cryedge.toml'} left as it was)") from None
    except OSError as error:  # a FIFO or a device in its place would have blocked the start for ever
        raise ConfigError(f"{where}: cannot read: {error.strerror}; "
                          f"nothing imported ({config_dir / 'cryedge.toml'} left as it was)") from None
    try:
        text = toml_text(raw, where)
    except ConfigError as error:
        raise ConfigError(f"{error}; not installed ({config_dir / 'cryedge.toml'} left as it was)") from None
    config_text, password = split_password(text, where)
    # the camera's and a stream microphone's too: cryedge.toml is readable by every user of the device (0644)
    config_text, camera_password = split_stream_password(config_text, where, "source", "camera")
    config_text, microphone_password = split_stream_password(config_text, where, "audio.source", "microphone")
    # a password file beside the boot file is the password given, as a password line is (and leaves the card too)
    moved_files = set()
    passwords = {"mqtt": password, "source": camera_password, "audio.source": microphone_password}
    for table in passwords:
        config_text, from_file, beside = split_password_file(config_text, boot_file, config_dir, table)
        if beside is not None:
            if passwords[table] is not None and passwords[table] != from_file:
                raise ConfigError(f"{where}: {table}.password_file and the password given in the file disagree; give "
                                  f"it once; nothing imported ({config_dir / 'cryedge.toml'} left as it was)")
            passwords[table] = from_file
            moved_files.add(beside)
    password, camera_password, microphone_password = passwords.values()
    target = config_dir / "cryedge.toml"
    _check(boot_file, target)
    given = {PASSWORD_FILE_NAME: password, CAMERA_PASSWORD_FILE_NAME: camera_password,
             MICROPHONE_PASSWORD_FILE_NAME: microphone_password}
    written = {name: (secret + "\n").encode("utf-8") for name, secret in given.items() if secret is not None}
    imported = _still_imported(config_dir)
    # the boot file describes the whole setup: a password an earlier import wrote that it does not give is another
    # camera's or broker's, sent (LoadCredential) to this one (a parent who deleted [mqtt] password kept the old
    # one on the device for ever): removed (None). One the user put there by hand (docs/service.md), or
    # `install.sh --mqtt-password-file` did, stays: the boot file says nothing about it, and the setup may need it.
    named = _password_files_named(text, config_dir)
    unnamed = [name for name in (PASSWORD_FILE_NAME, CAMERA_PASSWORD_FILE_NAME, MICROPHONE_PASSWORD_FILE_NAME)
               if name not in written and name not in named and (config_dir / name).is_file()]
    stale = [name for name in unnamed if name in imported]
    record = {**{name: digest for name, digest in imported.items() if name not in stale},
              **{name: hashlib.sha256(content).hexdigest() for name, content in written.items()}}
    record_text = "".join(f"{digest}  {name}\n" for name, digest in sorted(record.items())).encode("ascii")
    # the passwords before the config that names them; the old config last, as its .bak
    files = {**{name: (content, 0o600) for name, content in written.items()}, **dict.fromkeys(stale),
             target.name: (config_text.encode("utf-8"), 0o644)}
    if record or (config_dir / IMPORT_RECORD_NAME).exists():
        files[IMPORT_RECORD_NAME] = (record_text, 0o600) if record else None
    try:
        if target.is_file():
            files[target.name + ".bak"] = (target.read_bytes(), 0o644)
        _install_all(config_dir, files)
    except OSError as error:
        log.debug("%s", error, exc_info=True)
        reason = output_through_a_file(error) or f"cannot write {error.filename}: {error.strerror or error}"
        raise CryedgeError(f"{reason}; nothing imported ({config_dir} left as it was, {boot_file} kept)") from None
    boot_file.unlink()
    for moved in moved_files:
        moved.unlink(missing_ok=True)
    _sync_directory(boot_file.parent)
    moved = [name for name, secret in (("the MQTT password", password), ("the camera password", camera_password),
                                       ("the microphone password", microphone_password)) if secret is not None]
    log.info("installed %s%s; removed %s", target, "".join(f" and {name}" for name in moved),
             " and ".join(str(path) for path in [boot_file, *sorted(moved_files)]))
    for name in unnamed:
        if name in stale:
            log.info("removed %s: an earlier boot file gave it, the new one gives no such password", config_dir / name)
        else:
            by = " or by install.sh --mqtt-password-file" if name == PASSWORD_FILE_NAME else ""
            log.info("kept %s: put there by hand%s, not by an import (remove it if the new setup needs none)",
                     config_dir / name, by)
    return True


def _password_files_named(text: str, config_dir: Path) -> set[str]:
    """The password files of ``config_dir`` that the boot file's ``[mqtt]``, ``[source]`` or ``[audio.source]``
    names as its ``password_file``: the setup it describes takes its password from there."""
    named, data = set(), tomllib.loads(text)
    for table in ("mqtt", "source", "audio.source"):
        section = _table(data, table)
        given = section.get("password_file") if isinstance(section, dict) else None
        if isinstance(given, str) and Path(given).expanduser().parent.resolve() == config_dir.resolve():
            named.add(Path(given).name)
    return named


def _still_imported(config_dir: Path) -> dict[str, str]:
    """name: sha256 of the password files an earlier import wrote (``IMPORT_RECORD_NAME``) that still hold it.

    A record that cannot be read counts nothing as imported: a password kept is a line in the journal, one
    removed that was the user's is a camera that refuses the monitor after the reboot."""
    try:
        lines = (config_dir / IMPORT_RECORD_NAME).read_text("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    imported = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if name in (PASSWORD_FILE_NAME, CAMERA_PASSWORD_FILE_NAME, MICROPHONE_PASSWORD_FILE_NAME):
            try:
                if hashlib.sha256((config_dir / name).read_bytes()).hexdigest() == digest:
                    imported[name] = digest
            except OSError:
                pass  # gone, or a folder: not the import's any more
    return imported


def _check(boot_file: Path, installed: Path) -> None:
    """Refuses a boot file the service could not start with, before anything is installed.

    Installed, a bad key or value would stop the service at every start (a restart loop) in place
    of the config that worked; refused, the file stays on the boot partition to be corrected.
    """
    from edge.config import load_config

    try:
        load_config(boot_file, environ={})  # as the service reads it, passwords still inline
    except ConfigError as error:
        raise ConfigError(f"{error}; not installed ({installed} left as it was)") from None


def _install_all(directory: Path, files: dict[str, tuple[bytes, int] | None]) -> None:
    """Puts every file (name: (content, mode)) into ``directory``, or, on an OSError naming the file, none.
    A file given as None is removed, as part of the same all or nothing.

    Each is first written whole as a temporary beside its place (where a full or read-only disk fails);
    only then are they renamed into place, the step that cannot run out of space. A rename that still
    fails puts back what the earlier ones replaced.
    """
    made_directory = not directory.is_dir()
    staged: dict[Path, Path | None] = {}  # place: its new content, written beside it (None: to be removed)
    kept: dict[Path, Path] = {}  # place: a hard link to what it held, to put back
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            error.filename = str(directory)
            raise
        for name, given in files.items():
            place = directory / name
            try:
                if place.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(place))
                staged[place] = _write_beside(place, *given) if given is not None else None
                if place.exists():
                    kept[place] = place.with_name(f".{name}.old")
                    kept[place].unlink(missing_ok=True)
                    os.link(place, kept[place])
            except OSError as error:
                error.filename = str(place)  # not the temporary's name: the file the user will look for
                raise
        replaced: list[Path] = []
        try:
            for place, temporary in staged.items():
                if temporary is None:
                    place.unlink()
                else:
                    os.replace(temporary, place)
                replaced.append(place)
        except OSError as error:
            error.filename = str(place)
            for done in reversed(replaced):
                if done in kept:
                    os.replace(kept.pop(done), done)
                else:
                    done.unlink(missing_ok=True)
            raise
    except OSError:
        for leftover in (*staged.values(), *kept.values()):
            with contextlib.suppress(OSError):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
        if made_directory:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    for link in kept.values():
        with contextlib.suppress(OSError):
            link.unlink()
    _sync_directory(directory)


def _write_beside(path: Path, content: bytes, mode: int) -> Path:
    """``content`` written and synced to a temporary beside ``path``, with ``mode`` from the start (a password
    is never readable by others); the temporary's path."""
    temporary = path.with_name(f".{path.name}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temporary


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
