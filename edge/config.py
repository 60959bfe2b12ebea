"""The daemon's configuration: one TOML file, validated, with defaults that work with no file at all.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error that names
the key and the file, not a silently ignored setting. With no file: the bundled demo clip through the
default model, events printed to stdout as JSON lines (no broker).

Secrets: the MQTT password comes, first found wins, from ``$CRYEDGE_MQTT_PASSWORD``, the file named by
``mqtt.password_file``, ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd ``LoadCredential=``), or
``mqtt.password``. It is held as a ``SecretStr``: never logged, masked by ``cryedge config show``.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from edge import paths
from edge.errors import ConfigError

PASSWORD_ENV = "CRYEDGE_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"
MASK = "********"


def sanitize_id(text: str) -> str:
    """A string usable as an MQTT topic level and a Home Assistant id: ``[a-z0-9_-]``."""
    cleaned = re.sub(r"[^a-z0-9_-]+", "-", text.strip().lower()).strip("-")
    return cleaned or "cryedge"


def default_device_id() -> str:
    return sanitize_id(socket.gethostname().split(".")[0])


def default_state_dir(environ=os.environ) -> Path:
    """``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else ``$XDG_STATE_HOME/cryedge``."""
    if environ.get("STATE_DIRECTORY"):
        # systemd may pass several, colon-separated; the first is ours
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = Path(environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "cryedge"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeviceConfig(Section):
    id: str = Field(default_factory=default_device_id, pattern=r"^[A-Za-z0-9_-]+$", max_length=64)
    name: str = "Cry monitor"


class SourceConfig(Section):
    """Where frames come from; consumed by ``edge.source``."""

    # a file path, /dev/videoN, a camera index ("0"), rtsp:// or http(s):// URL, or "picamera2"
    uri: str = Field(default_factory=lambda: str(paths.data_file("demo.mp4")))
    fps: float | None = Field(default=None, gt=0)  # target rate; None: the source's own rate
    width: int = Field(default=640, gt=0)  # capture size for cameras; files keep their size
    height: int = Field(default=480, gt=0)
    realtime: bool = True  # pace files at their frame rate (False: as fast as possible)
    picamera2_stream: Literal["main", "lores"] = "main"
    stall_seconds: float = Field(default=5.0, gt=0)  # no frame for this long: reopen
    # RTP over the RTSP connection (tcp, OpenCV's default: no lost packets) or over UDP, which some
    # cameras and relays only offer
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    reopen_min_seconds: float = Field(default=1.0, gt=0)  # reopen back-off, doubling up to the max
    reopen_max_seconds: float = Field(default=30.0, gt=0)


class LandmarksConfig(Section):
    """MediaPipe Tasks landmarkers; consumed by ``edge.landmarks``."""

    face_model: Path = Field(default_factory=lambda: paths.landmarks_dir() / "face_landmarker.task")
    pose_model: Path = Field(default_factory=lambda: paths.landmarks_dir() / "pose_landmarker.task")
    pose: bool = True
    # pose on every k-th frame, reused in between: on one x86 core at 640x480 k=2 gives 51-67 fps against
    # 40-45 for k=1 and moves the demo events by under 0.1 s (benchmarks/pipeline.py); a Pi needs it more
    pose_every: int = Field(default=2, ge=1)
    subject: Literal["largest", "center"] = "largest"
    roi: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 as fractions of the frame
    min_face_detection_confidence: float = Field(default=0.5, ge=0, le=1)
    min_face_presence_confidence: float = Field(default=0.5, ge=0, le=1)
    min_pose_detection_confidence: float = Field(default=0.5, ge=0, le=1)
    min_pose_presence_confidence: float = Field(default=0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(default=0.5, ge=0, le=1)
    num_threads: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _roi_inside_frame(self) -> LandmarksConfig:
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError("roi must be [x0, y0, x1, y1] fractions with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        return self


class ModelConfig(Section):
    """The cry model; consumed by ``edge.model``. Its decision threshold is ``alarm.on_threshold``."""

    path: Path = Field(default_factory=paths.default_model)
    num_threads: int = Field(default=1, ge=1)
    edgetpu: Literal["off", "usb", "pci"] = "off"


class AlarmConfig(Section):
    """When a cry episode starts and ends; consumed by ``edge.alarm``."""

    smoothing: Literal["median", "ema", "none"] = "median"
    median_window: int = Field(default=5, ge=1)  # scores in the running median
    ema_alpha: float = Field(default=0.3, gt=0, le=1)  # weight of the newest score
    on_threshold: float | None = Field(default=None, ge=0, le=1)  # None: the model card's threshold
    off_threshold: float | None = Field(default=None, ge=0, le=1)  # None: on_threshold - 0.2
    min_on_seconds: float = Field(default=1.0, ge=0)  # smoothed score above ON this long: start
    hold_seconds: float = Field(default=3.0, ge=0)  # below OFF this long: end
    cooldown_seconds: float = Field(default=10.0, ge=0)  # no new start this soon after an end
    # cannot perceive (no face, no body, too dark, ...) this long: end, with that as the reason.
    # "no_face_seconds" is its older name, still read.
    blind_seconds: float = Field(default=5.0, ge=0, validation_alias=AliasChoices("blind_seconds", "no_face_seconds"))

    @model_validator(mode="after")
    def _hysteresis(self) -> AlarmConfig:
        both = self.on_threshold is not None and self.off_threshold is not None
        if both and self.off_threshold > self.on_threshold:
            raise ValueError("off_threshold must not be above on_threshold")
        return self

    def thresholds(self, model_threshold: float) -> tuple[float, float]:
        """(on, off) thresholds, filling the unset ones from the model card's threshold."""
        on = self.on_threshold if self.on_threshold is not None else model_threshold
        off = self.off_threshold if self.off_threshold is not None else max(0.0, on - 0.2)
        return on, min(off, on)


class TlsConfig(Section):
    """Present (``[mqtt.tls]``) means TLS is on; no ca_file means the system's CAs."""

    ca_file: Path | None = None
    certfile: Path | None = None  # client certificate, for brokers that require one
    keyfile: Path | None = None
    insecure: bool = False  # skip the host name check (self-signed test brokers only)

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        return self


class MqttConfig(Section):
    """The broker; consumed by ``edge.publish``. An empty host: events go to stdout as JSON lines."""

    host: str = ""
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 1883, or 8883 with TLS
    tls: TlsConfig | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: str | None = None  # None: cryedge-<device id>
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    topic_prefix: str | None = None  # None: cryedge/<device id>
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive: int = Field(default=30, ge=5, le=3600)
    qos: Literal[1, 2] = 1  # for events; state and availability use 1
    connect_timeout: float = Field(default=10.0, gt=0)  # wait at start for the broker's answer
    reconnect_min_seconds: float = Field(default=1.0, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    state_interval: float = Field(default=5.0, ge=0)  # probability updates at most this often
    stats_interval: float = Field(default=30.0, gt=0)  # diagnostics (fps, inference ms, face share)

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)


class OutboxConfig(Section):
    """Events not yet acknowledged by the broker, kept on disk across restarts."""

    path: Path = Field(default_factory=lambda: default_state_dir() / "outbox.sqlite3")
    max_events: int = Field(default=1000, ge=2)


class HealthConfig(Section):
    """The local HTTP health endpoint (``/health``, ``/stats``, ``/metrics``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)


class Config(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    alarm: AlarmConfig = Field(default_factory=AlarmConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

    @model_validator(mode="after")
    def _derived(self) -> Config:
        # fill the defaults that depend on the device id, so `config show` prints what is used
        if self.mqtt.client_id is None:
            self.mqtt.client_id = f"cryedge-{self.device.id}"
        if self.mqtt.topic_prefix is None:
            self.mqtt.topic_prefix = f"cryedge/{self.device.id}"
        self.mqtt.topic_prefix = self.mqtt.topic_prefix.rstrip("/")
        if not self.mqtt.topic_prefix or any(c in self.mqtt.topic_prefix for c in "+#"):
            raise ValueError("mqtt.topic_prefix must be a non-empty topic without + or #")
        return self


# ----------------------------------------------------------------------------- loading


def _where(config_path: Path | None) -> str:
    return str(config_path) if config_path is not None else "configuration"


def _describe(error: dict, data: Any, model: type[BaseModel]) -> str:
    """``key.path: message``, with a "did you mean" for an unknown key."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        known: list[str] = []
        section: Any = model
        for part in loc[:-1]:
            field = getattr(section, "model_fields", {}).get(part)
            section = _model_of(field.annotation) if field else None
        if section is not None and hasattr(section, "model_fields"):
            known = list(section.model_fields)
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean {'.'.join(loc[:-1] + close)}?)" if close else ""
        return f"{key}: unknown key{hint}"
    return f"{key}: {error['msg']}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # Optional[X]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _looks_like_file(uri: str) -> bool:
    return not (uri == "picamera2" or uri.isdigit() or uri.startswith("/dev/") or "://" in uri)


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative paths in a config file mean relative to that file's folder; ``~`` is expanded."""

    def fix(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else base / path

    config.landmarks.face_model = fix(config.landmarks.face_model)
    config.landmarks.pose_model = fix(config.landmarks.pose_model)
    config.model.path = fix(config.model.path)
    config.outbox.path = fix(config.outbox.path)
    config.mqtt.password_file = fix(config.mqtt.password_file)
    if config.mqtt.tls is not None:
        for name in ("ca_file", "certfile", "keyfile"):
            setattr(config.mqtt.tls, name, fix(getattr(config.mqtt.tls, name)))
    if _looks_like_file(config.source.uri):
        config.source.uri = str(fix(Path(config.source.uri)))


def _resolve_password(config: Config, where: str, environ) -> None:
    mqtt = config.mqtt
    if environ.get(PASSWORD_ENV):
        mqtt.password = SecretStr(environ[PASSWORD_ENV])
        return
    if mqtt.password_file is not None:
        try:
            mqtt.password = SecretStr(mqtt.password_file.read_text().rstrip("\r\n"))
        except OSError as error:
            raise ConfigError(f"{where}: mqtt.password_file: cannot read {mqtt.password_file}: {error.strerror}") from None
        return
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL_NAME).is_file():
        mqtt.password = SecretStr((Path(credentials) / CREDENTIAL_NAME).read_text().rstrip("\r\n"))


def load_config(path: Path | str | None = None, overrides: dict | None = None, environ=os.environ) -> Config:
    """The effective configuration: defaults, then the TOML file at ``path``, then ``overrides``.

    ``overrides`` is a nested dict like the file's tables (see ``cli_overrides``). Raises ConfigError
    with ``FILE: key.path: message`` for a missing file, a TOML syntax error (with its line), an unknown
    key or a bad value.
    """
    config_path = Path(path) if path is not None else None
    where = _where(config_path)
    data: dict = {}
    if config_path is not None:
        try:
            with open(config_path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file") from None
        except OSError as error:
            raise ConfigError(f"{where}: cannot read: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{where}: TOML syntax error: {error}") from None
    if overrides:
        data = _merge(data, overrides)
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems = error.errors()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{where}: {_describe(problems[0], data, Config)}{more}") from None
    _resolve_paths(config, config_path.resolve().parent if config_path is not None else Path.cwd())
    _resolve_password(config, where, environ)
    _check_tls_files(config, where)
    return config


def _check_tls_files(config: Config, where: str) -> None:
    """Missing certificate files are a configuration error now, not a TLS failure at the first connect."""
    if config.mqtt.tls is None:
        return
    for name in ("ca_file", "certfile", "keyfile"):
        path = getattr(config.mqtt.tls, name)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{where}: mqtt.tls.{name}: cannot read {path}")


def parse_broker_url(url: str) -> dict:
    """``mqtt://user@host:port`` (or ``mqtts://`` for TLS) as an ``[mqtt]`` override table.

    A password in the URL is refused: it would show in ``ps`` and shell history.
    """
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"--broker {url}: scheme must be mqtt:// or mqtts://")
    if parts.password is not None:
        raise ConfigError(f"--broker: no password in the URL; use ${PASSWORD_ENV} or mqtt.password_file")
    if not parts.hostname:
        raise ConfigError(f"--broker {url}: no host name")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--broker {url}: the port must be a number from 1 to 65535") from None
    table: dict[str, Any] = {"host": parts.hostname}
    if port is not None:
        table["port"] = port
    if parts.username:
        table["username"] = unquote(parts.username)
    if parts.scheme in ("mqtts", "ssl"):
        table["tls"] = {}
    return table


def cli_overrides(source: str | None = None, broker: str | None = None) -> dict:
    """The override dict for ``cryedge run --source SRC --broker URL``."""
    overrides: dict[str, Any] = {}
    if source is not None:
        overrides["source"] = {"uri": source}
    if broker is not None:
        overrides["mqtt"] = parse_broker_url(broker)
    return overrides


# ----------------------------------------------------------------------------- showing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, SecretStr):
        return _toml_value(MASK)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_toml(config: Config) -> str:
    """The configuration as TOML, secrets masked; unset optional keys shown as comments."""
    lines: list[str] = []

    def table(name: str, model: BaseModel) -> None:
        lines.append(f"[{name}]")
        nested = []
        for key in type(model).model_fields:
            value = getattr(model, key)
            if isinstance(value, BaseModel):
                nested.append((f"{name}.{key}", value))
            elif value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
        for sub_name, sub in nested:
            table(sub_name, sub)

    for name in Config.model_fields:
        table(name, getattr(config, name))
    return "\n".join(lines)


def summary(config: Config) -> str:
    broker = (
        f"mqtt {config.mqtt.host}:{config.mqtt.effective_port} as {config.mqtt.username or 'anonymous'}"
        f"{' (TLS)' if config.mqtt.tls else ''}, topics {config.mqtt.topic_prefix}/"
        if config.mqtt.enabled
        else "no broker (events to stdout)"
    )
    return f"device {config.device.id}; source {config.source.uri}; model {config.model.path}; {broker}"


# ----------------------------------------------------------------------------- commands


def _check(args) -> int:
    config = load_config(args.file)
    print(f"ok: {summary(config)}")
    return 0


def _show(args) -> int:
    print(to_toml(load_config(args.config)), end="")
    return 0


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("config", help="check or show the configuration")
    commands = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = commands.add_parser("check", help="validate a config file (exit code 3 if it is invalid)")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(handler=_check)
    show = commands.add_parser("show", help="print the effective configuration as TOML, secrets masked")
    show.add_argument("--config", type=Path, metavar="FILE", help="config file (default: built-in defaults)")
    show.set_defaults(handler=_show)
