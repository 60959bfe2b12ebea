"""The daemon's configuration: one TOML file, validated, with defaults that work with no file at all.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error that names
the key and the file, not a silently ignored setting. With no file: the bundled demo clip through the
default model, events printed to stdout as JSON lines (no broker).

Numbers: every one is finite and has a range that means something (a timeout of 1e308 seconds or a
hold of ``inf`` would silently turn alerting off); a value outside it is an error, never clamped.

Sources are described one way, as Frigate describes detectors: ``[source] type = "picamera2" | "v4l2" |
"rtsp" | "http" | "file"`` with that type's own options (``SourceConfig``, a discriminated union), or
``"none"``: no camera, a monitor that only listens (``[audio]`` on, with a microphone or a sound track
of its own).
``uri = "..."`` (and ``cryedge run --source ...``) is a shorthand that ``parse_source_uri`` turns into
the typed table; the old flat ``[source]`` keys keep working through it.

Secrets: the MQTT password comes, first found wins, from ``$CRYEDGE_MQTT_PASSWORD``, the file named by
``mqtt.password_file``, ``$CREDENTIALS_DIRECTORY/mqtt_password`` (systemd ``LoadCredential=``), or
``mqtt.password``. A camera's password likewise from ``$CRYEDGE_CAMERA_PASSWORD``,
``source.password_file``, ``$CREDENTIALS_DIRECTORY/camera_password``, or ``source.password`` (or the
URL); a stream microphone's (``[audio.source] type = "stream"``) from ``$CRYEDGE_MICROPHONE_PASSWORD``,
``audio.source.password_file``, ``$CREDENTIALS_DIRECTORY/microphone_password``, or ``password`` (or the URL).
All are held as ``SecretStr``: never logged, masked by ``cryedge config show``; a URL is shown
through ``mask_url`` everywhere.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import quote, unquote, urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from edge import paths
from edge.errors import ConfigError, mask_password

log = logging.getLogger(__name__)

PASSWORD_ENV = "CRYEDGE_MQTT_PASSWORD"
CREDENTIAL_NAME = "mqtt_password"
CAMERA_PASSWORD_ENV = "CRYEDGE_CAMERA_PASSWORD"
CAMERA_CREDENTIAL_NAME = "camera_password"
MICROPHONE_PASSWORD_ENV = "CRYEDGE_MICROPHONE_PASSWORD"  # [audio.source] type = "stream"
MICROPHONE_CREDENTIAL_NAME = "microphone_password"
LIVE_TOKEN_ENV = "CRYEDGE_LIVE_TOKEN"
LIVE_TOKEN_CREDENTIAL = "live_token"
MIN_LIVE_TOKEN = 16  # characters: a token a neighbour on the network cannot guess
MASK = "********"
# MQTT topics are at most 65535 bytes of UTF-8; cryedge appends at most "/device/<64-byte id>/config"
MAX_TOPIC_BYTES = 65535
MAX_TOPIC_PREFIX_BYTES = MAX_TOPIC_BYTES - len("/device//config") - 64
MAX_THREADS = 8  # a Pi has 4 cores; more threads than 8 only contend (and 100000 crashed the interpreter)
HOUR = 3600.0
DAY = 86400.0
# Keys an older cryedge accepted that nothing honours: read, warned about once, dropped (an error would
# crash-loop a service whose old config has them). (table, key) -> why, and what to do instead.
IGNORED_KEYS = {
    ("landmarks", "num_threads"): "MediaPipe Tasks has no thread count (each landmarker runs its model on one "
                                  "core); remove it, and bound cores with taskset or systemd's CPUAffinity=",
}


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
    if environ.get("XDG_STATE_HOME"):
        return Path(environ["XDG_STATE_HOME"]) / "cryedge"
    instead = "set [outbox] path (or $STATE_DIRECTORY, $XDG_STATE_HOME) for the outbox"
    return paths.home(instead, environ) / ".local" / "state" / "cryedge"


class Section(BaseModel):
    # allow_inf_nan=False: TOML spells inf, nan and 1e400 (read as inf) as numbers, and no setting means one
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}  # a stream URL's port when it names none


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme, user info or None, the rest)`` of ``scheme://[userinfo@]rest``, split as FFmpeg splits it.

    The user info ends at the last ``@`` before the first ``/``, ``?`` or ``#``; a URL that ``urlsplit``
    refuses (a bad port) splits too, so that it can still be masked.
    """
    scheme, separator, rest = str(url).partition("://")
    if not separator:
        return "", None, str(url)
    end = min((found for found in (rest.find(stop) for stop in "/?#") if found != -1), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    return (scheme, userinfo, host + rest[end:]) if at else (scheme, None, rest)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its user info, and the user name and password that held (unquoted; None: not there)."""
    scheme, userinfo, rest = split_userinfo(url)
    if userinfo is None:
        return str(url), None, None
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{rest}", unquote(user) if user else None, unquote(password) if colon else None


# query parameters that carry a camera's password or token (many MJPEG cameras take ?user=admin&pwd=...)
SECRET_QUERY_KEY = re.compile(r"(?i)^(pass(word|wd)?|pwd|pw|psw|token|access_token|auth|key|api_?key|secret|sig(nature)?)$")


def mask_url(url: str) -> str:
    """``url`` with the password in its user info, and the values of query parameters named like a password
    or a token, replaced by ``********``: the one way a URL is shown."""
    scheme, userinfo, rest = split_userinfo(url)
    if userinfo is not None and ":" in userinfo:
        url = f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@{rest}"
    head, question, tail = str(url).partition("?")
    if not question:
        return str(url)
    query, hash_, fragment = tail.partition("#")
    masked = []
    for item in query.split("&"):
        key, equals, value = item.partition("=")
        masked.append(f"{key}={MASK}" if equals and value and SECRET_QUERY_KEY.match(unquote(key)) else item)
    return f"{head}?{'&'.join(masked)}{hash_}{fragment}"


def with_credentials(url: str, username: str | None, password: str | None) -> str:
    """``url`` with ``username`` and ``password`` (quoted) as its user info, replacing any it had."""
    if username is None and password is None:
        return url
    scheme, _, rest = split_userinfo(url)
    userinfo = quote(username or "", safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return f"{scheme}://{userinfo}@{rest}"


def _topic_prefix(text: str) -> str:
    """A prefix that cryedge's topics can be built on: a plain topic name (MQTT 3.1.1 section 4.7)."""
    if not text:
        raise ValueError("must not be empty")
    if "+" in text or "#" in text:
        raise ValueError("must not contain + or #: those are wildcards for subscribing, not part of a topic name")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text):
        raise ValueError("must not contain NUL or other control characters")
    if text.startswith("/") or text.endswith("/"):
        raise ValueError("must not start or end with /: that makes an empty topic level")
    if text.startswith("$"):
        raise ValueError("must not start with $: such topics belong to the broker ($SYS)")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_PREFIX_BYTES:
        raise ValueError(f"is {size} bytes of UTF-8; with what cryedge appends, MQTT allows at most {MAX_TOPIC_PREFIX_BYTES}")
    return text


TopicPrefix = Annotated[str, AfterValidator(_topic_prefix)]


def _mqtt_string(text: str) -> str:
    """A string MQTT can carry: its length goes in 2 bytes (MQTT 3.1.1 section 1.5.3)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_BYTES:  # paho raised struct.error at connect: a traceback, and systemd restarted it for ever
        raise ValueError(f"is {size} bytes of UTF-8; MQTT allows at most {MAX_TOPIC_BYTES}")
    return text


MqttString = Annotated[str, AfterValidator(_mqtt_string)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class DeviceConfig(Section):
    id: str = Field(default_factory=default_device_id, pattern=r"^[A-Za-z0-9_-]+$", max_length=64)
    name: str = Field(default="Cry monitor", min_length=1, max_length=128)


class SourceOptions(Section):
    """What every frame source takes; each type below adds its own options."""

    type: str
    fps: float | None = Field(default=None, ge=0.1, le=120)  # target rate; None: the source's own rate
    stall_seconds: float = Field(default=5.0, gt=0, le=300)  # no frame for this long: reopen
    reopen_min_seconds: float = Field(default=1.0, gt=0, le=600)  # reopen back-off, doubling up to the max
    reopen_max_seconds: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceOptions:
        if self.reopen_min_seconds > self.reopen_max_seconds:
            raise ValueError("reopen_min_seconds must not be above reopen_max_seconds")
        return self

    def display(self) -> str:
        """How logs, status, /stats and errors name this source: passwords masked."""
        raise NotImplementedError


class Picamera2SourceConfig(SourceOptions):
    """The Pi's CSI camera through picamera2 (``python3-picamera2`` from the Pi's apt)."""

    type: Literal["picamera2"] = "picamera2"
    camera: int = Field(default=0, ge=0, le=15)  # picamera2's camera number
    stream: Literal["main", "lores"] = Field(default="main", validation_alias=AliasChoices("stream", "picamera2_stream"))
    width: int = Field(default=640, ge=16, le=8192)
    height: int = Field(default=480, ge=16, le=8192)
    # Night with a NoIR camera (docs/night.md): grey pictures (the ISP's saturation 0: IR light tints a
    # NoIR picture pink), and how far auto-exposure may go in the dark.
    greyscale: bool = False
    min_fps: float | None = Field(default=None, ge=0.1, le=120)  # AE may lengthen frames to 1/min_fps s (motion blur)
    analogue_gain: float | None = Field(default=None, ge=1.0, le=16.0)  # fixed sensor gain; None: automatic

    @model_validator(mode="after")
    def _frame_rates(self) -> Picamera2SourceConfig:
        if self.min_fps is not None and self.fps is not None and self.min_fps > self.fps:
            raise ValueError("min_fps must not be above fps")
        return self

    def display(self) -> str:
        return f"picamera2:{self.camera}" + (":lores" if self.stream == "lores" else "")


class V4l2SourceConfig(SourceOptions):
    """A USB (UVC) or other V4L2 camera through OpenCV."""

    type: Literal["v4l2"] = "v4l2"
    device: int | str = "/dev/video0"  # a device path, or an index as OpenCV counts them
    width: int = Field(default=640, ge=16, le=8192)
    height: int = Field(default=480, ge=16, le=8192)

    @field_validator("device")
    @classmethod
    def _device(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 63:
            raise ValueError("a camera index is 0 to 63")
        if isinstance(value, str) and not value.startswith("/dev/"):
            raise ValueError("must be a device path under /dev/ (like /dev/video0) or a camera index")
        return value

    def display(self) -> str:
        return f"device:{self.device}"


class StreamCredentials(Section):
    """A stream's ``url`` and who may read it: a user name, and a password held only as a ``SecretStr``.

    Credentials: in the URL (split off, shown masked), or ``username`` here and the password from an
    environment variable, ``password_file``, a systemd credential or ``password`` (``_resolve_password``).
    """

    url: str
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        """A password written in ``url`` is held as the secret ``password``, as ``uri = ...`` holds it: a URL
        is a plain string, which `config show` and a repr print as they are."""
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            return data
        url, user, password = split_credentials(data["url"])
        if user is None and password is None:
            return data
        data = {**data, "url": url}
        for key, value in (("username", user), ("password", password)):
            given = data.get(key)
            if isinstance(given, SecretStr):
                given = given.get_secret_value()
            if value is not None and given is not None and given != value:
                raise ValueError(f"url and {key} disagree; give it once")  # no values: one may be a password
            if value is not None:
                data[key] = value
        return data

    @field_validator("url")
    @classmethod
    def _no_masked_query(cls, url: str) -> str:
        """A query password that is ``config show``'s mask: the camera answered 401, with no hint why."""
        for item in url.partition("?")[2].partition("#")[0].split("&"):
            key, _, value = item.partition("=")
            if SECRET_QUERY_KEY.match(unquote(key)) and unquote(value) == MASK:
                raise ValueError(f"its {unquote(key)} is {MASK}, the mask `cryedge config show` prints in place of a "
                                 "password; write the real one")
        return url

    @model_validator(mode="after")
    def _user_for_password(self) -> StreamCredentials:
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username (in the url or as username)")
        return self

    def display(self) -> str:
        return f"stream:{mask_url(with_credentials(self.url, self.username, MASK if self.password else None))}"

    def open_url(self) -> str:
        """The URL to open, credentials included; never to be shown."""
        password = self.password.get_secret_value() if self.password is not None else None
        return with_credentials(self.url, self.username, password)


class NetworkSourceOptions(SourceOptions, StreamCredentials):
    """A network camera through OpenCV's FFmpeg; ``stall_seconds`` is also its open and read timeout.

    Its password from ``$CRYEDGE_CAMERA_PASSWORD``, ``password_file``, ``$CREDENTIALS_DIRECTORY/camera_password``,
    ``password`` or the URL.
    """

    display = StreamCredentials.display  # not SourceOptions' abstract one, first in the order of bases


def _url_scheme(url: str, schemes: tuple[str, ...]) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in schemes:
        raise ValueError(f"must be a {' or '.join(f'{s}://' for s in schemes)} URL")
    if not urlsplit(url).hostname:
        raise ValueError("has no host name")
    try:
        port = urlsplit(url).port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:  # else reopened with back-off for ever, a timeout at a time
        raise ValueError("its port must be a number from 1 to 65535")
    return url


class RtspSourceConfig(NetworkSourceOptions):
    """An RTSP camera or relay."""

    type: Literal["rtsp"] = "rtsp"
    # RTP over the RTSP connection (tcp, OpenCV's default: no lost packets) or over UDP, which some
    # cameras and relays only offer
    transport: Literal["tcp", "udp"] = Field(default="tcp", validation_alias=AliasChoices("transport", "rtsp_transport"))

    @field_validator("url")
    @classmethod
    def _rtsp(cls, url: str) -> str:
        return _url_scheme(url, ("rtsp", "rtsps"))


class HttpSourceConfig(NetworkSourceOptions):
    """An HTTP camera: MJPEG (``multipart/x-mixed-replace``) or anything else FFmpeg reads over HTTP."""

    type: Literal["http"] = "http"

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        return _url_scheme(url, ("http", "https"))


class FileSourceConfig(SourceOptions):
    """A video file; its frames carry the video's own timeline."""

    type: Literal["file"] = "file"
    path: Path = Field(default_factory=lambda: paths.data_file("demo.mp4"))
    realtime: bool = True  # pace the file at its frame rate (False: as fast as it decodes)

    def display(self) -> str:
        return f"file:{mask_password(self.path.name)}"  # a file: URL with a password left its user info in the path


class NoSourceConfig(Section):
    """No camera: the monitor only listens (``[audio] enabled`` with an ``[audio.source]`` of its own)."""

    type: Literal["none"] = "none"

    def display(self) -> str:
        return "none"


# The frame sources, one config class a type. An audio source (a later issue) is another such union of
# classes with ``type`` literals, parsed by the same shorthand; edge.source maps each type to its backend.
VIDEO_SOURCES = (Picamera2SourceConfig, V4l2SourceConfig, RtspSourceConfig, HttpSourceConfig, FileSourceConfig,
                 NoSourceConfig)
SourceConfig = Annotated[Union[VIDEO_SOURCES], Field(discriminator="type")]  # noqa: UP007 - a tuple of classes
# the flat [source] keys of the URI form; any of them that does not apply to the URI's type is dropped
# when it holds the old default (what `config show` printed), so a saved old file keeps loading
LEGACY_SOURCE_DEFAULTS = {"width": None, "height": None, "realtime": None, "picamera2_stream": "main",
                          "rtsp_transport": "tcp"}
# what --source replaces: which camera, not how it is read
SOURCE_IDENTITY_KEYS = {"type", "uri", "url", "path", "device", "camera", "username", "password", "password_file"}


def parse_source_uri(uri: str) -> dict[str, Any]:
    """The typed ``[source]`` table a shorthand URI names: the one place a URI is classified.

    ``picamera2[:N][:main|lores]``, ``/dev/videoN`` or a camera index (v4l2), ``rtsp[s]://...``,
    ``http[s]://...``, ``none`` (no camera), ``file://PATH`` or any other text (a video file). A password in a URL is split
    off into ``password``, so that nothing holds it but a ``SecretStr``. An integer is a camera index, as
    ``device = 0`` is (``uri = 0``); any other TOML value (``uri = ["x"]``) was read as a file of that name.
    """
    if isinstance(uri, int) and not isinstance(uri, bool):
        return {"type": "v4l2", "device": uri}
    if not isinstance(uri, str):
        kind = _toml_kind(uri)  # not the value: it may hold a password
        raise ValueError(f'uri must be a string ("/dev/video0", "rtsp://...", a file) or a camera index, not {kind}')
    text = uri.strip()
    if not text:
        raise ValueError("uri is empty")
    if text.lower() == "none":  # no camera (a file of that name: ./none)
        return {"type": "none"}
    head, _, tail = text.partition(":")
    if head == "picamera2":
        table: dict[str, Any] = {"type": "picamera2"}
        for part in filter(None, tail.split(":")):
            if part.isdigit():
                table["camera"] = int(part)
            else:
                table["stream"] = part
        return table
    if text.isdigit():
        return {"type": "v4l2", "device": int(text)}
    if text.startswith("/dev/"):
        return {"type": "v4l2", "device": text}
    if "://" not in text:
        return {"type": "file", "path": text}
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        return {"type": "file", "path": unquote(urlsplit(text).path)}
    kinds = {"rtsp": "rtsp", "rtsps": "rtsp", "http": "http", "https": "http"}
    if scheme not in kinds:
        raise ValueError(f"uri {mask_url(text)}: no source type reads {scheme}:// (rtsp://, http://, "
                         "/dev/videoN, picamera2 or a file)")
    url, user, password = split_credentials(text)
    table = {"type": kinds[scheme], "url": url}
    if user is not None:
        table["username"] = user
    if password is not None:
        table["password"] = password
    return table


def _source_model(kind: str, sources: tuple[type[SourceOptions], ...] = VIDEO_SOURCES) -> type[SourceOptions] | None:
    return next((model for model in sources if model.model_fields["type"].default == kind), None)


def _accepts(model: type[BaseModel], key: str) -> str | None:
    """The field of ``model`` that ``key`` names (by its name or an older alias), or None."""
    for name, field in model.model_fields.items():
        aliases = getattr(field.validation_alias, "choices", None) or ()
        if key == name or key in aliases:
            return name
    return None


def source_table(value: Any, sources: tuple[type[SourceOptions], ...] = VIDEO_SOURCES,
                 parse: Callable[[str], dict[str, Any]] = parse_source_uri, default_type: str = "file") -> Any:
    """A source table in the typed form: ``uri = ...`` (or no ``type``) is the shorthand.

    With the shorthand the other keys are that type's options; the flat keys of the old format that do
    not apply to the type are dropped when they hold their old default (see LEGACY_SOURCE_DEFAULTS).
    ``sources`` and ``parse`` are the video sources' by default; another kind of source (audio) passes its own.
    """
    if not isinstance(value, dict) or ("type" in value and "uri" not in value):
        return value
    table = dict(value)
    uri = table.pop("uri", None)
    typed = parse(uri) if uri is not None else {"type": default_type}
    if table.get("type", typed["type"]) != typed["type"]:  # uri and type both say what kind of source it is
        raise ValueError(f"uri is a {typed['type']} source but type = {table['type']!r}: uri and type say the "
                         "same thing, give one")
    model = _source_model(typed["type"], sources)
    for key, item in table.items():
        name = _accepts(model, key) if model is not None else None
        if name is not None and name in typed:
            if typed[name] != item:  # no values in the message: one of them may be a password
                raise ValueError(f"uri and {key} disagree; give it once")
            continue
        if name is not None:
            typed[name] = item
        elif key in LEGACY_SOURCE_DEFAULTS and LEGACY_SOURCE_DEFAULTS[key] in (None, item):
            continue  # an old flat key that never applied to this type
        else:
            typed[key] = item  # not this type's: validation names it
    return typed


def _replace_source(table: dict, uri: str) -> dict:
    """``--source URI`` over a file's ``[source]``: another camera, read with the settings that apply to it."""
    typed = source_table({"uri": uri})
    model = _source_model(typed["type"])
    current = source_table(table)
    if isinstance(current, dict) and model is not None:
        for key, item in current.items():
            name = _accepts(model, key)
            if name is not None and name not in SOURCE_IDENTITY_KEYS and name not in typed:
                typed[name] = item
    return typed


_SOURCE_ADAPTER = TypeAdapter(SourceConfig)


def source_config(uri: str, **options: Any) -> SourceConfig:
    """A validated source config from a shorthand URI and that type's options (for code and tests)."""
    return _SOURCE_ADAPTER.validate_python(source_table({"uri": uri, **options}))


class LandmarksConfig(Section):
    """MediaPipe Tasks landmarkers; consumed by ``edge.landmarks``."""

    face_model: Path = Field(default_factory=lambda: paths.landmarks_dir() / "face_landmarker.task")
    pose_model: Path = Field(default_factory=lambda: paths.landmarks_dir() / "pose_landmarker.task")
    pose: bool = True
    # pose on every k-th frame, reused in between: on one x86 core at 640x480 k=2 gives 51-67 fps against
    # 40-45 for k=1 and moves the demo events by under 0.1 s (benchmarks/pipeline.py); a Pi needs it more
    pose_every: int = Field(default=2, ge=1, le=100)
    subject: Literal["largest", "center"] = "largest"
    roi: tuple[Fraction, Fraction, Fraction, Fraction] | None = None  # x0, y0, x1, y1 as fractions of the frame
    min_face_detection_confidence: float = Field(default=0.5, ge=0, le=1)
    min_face_presence_confidence: float = Field(default=0.5, ge=0, le=1)
    min_pose_detection_confidence: float = Field(default=0.5, ge=0, le=1)
    min_pose_presence_confidence: float = Field(default=0.5, ge=0, le=1)
    min_tracking_confidence: float = Field(default=0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _roi_inside_frame(self) -> LandmarksConfig:
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError("roi must be [x0, y0, x1, y1] fractions with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
            if min(x1 - x0, y1 - y0) < MIN_ROI:  # a typo such as 0.5001: no face fits, or no pixel at all
                raise ValueError(f"roi is {x1 - x0:.2%} of the frame wide and {y1 - y0:.2%} high: make it at least "
                                 f"{MIN_ROI:.0%} either way (a face must fill a few dozen pixels of it)")
        return self


# the smallest [landmarks] roi, as a fraction of the frame either way: 32 px of a 640-px frame
MIN_ROI = 0.05


class ExposureConfig(Section):
    """Lifting dark or flat frames before the landmarkers (night, NoIR); consumed by ``edge.exposure``."""

    enabled: bool = True
    dark_below: float = Field(default=70.0, ge=0, le=255)  # mean luma (0-255) under which a frame is lifted
    flat_below: float = Field(default=20.0, ge=0, le=255)  # or luma spread under which it is
    target: float = Field(default=110.0, gt=0, lt=255)  # mean luma the gamma aims at
    clahe_clip: float = Field(default=2.0, gt=0, le=40)  # CLAHE's contrast limit after the gamma
    too_dark_below: float = Field(default=12.0, ge=0, le=255)  # no face and darker than this: status "too_dark"


class ModelConfig(Section):
    """The cry model; consumed by ``edge.model``. Its decision threshold is ``alarm.on_threshold``."""

    path: Path = Field(default_factory=paths.default_model)
    num_threads: int = Field(default=1, ge=1, le=MAX_THREADS)
    edgetpu: Literal["off", "usb", "pci"] = "off"


class AlarmConfig(Section):
    """When a cry episode starts and ends; consumed by ``edge.alarm``."""

    smoothing: Literal["median", "ema", "none"] = "median"
    median_window: int = Field(default=5, ge=1, le=1000)  # scores in the running median
    ema_alpha: float = Field(default=0.3, gt=0, le=1)  # weight of the newest score
    # 0 and 1 are not thresholds: every score is at or above 0 (an alarm from the first window on), none is
    # below 0 (an alarm that never ends) and an int8 model's top score is 0.996 (an alarm that never starts)
    on_threshold: float | None = Field(default=None, gt=0, lt=1)  # None: the model card's threshold
    off_threshold: float | None = Field(default=None, gt=0, lt=1)  # None: on_threshold - 0.2, at least half of it
    # Longer than these, an alert would come too late to be one (and inf turned alerting off)
    min_on_seconds: float = Field(default=1.0, ge=0, le=600)  # smoothed score above ON this long: start
    hold_seconds: float = Field(default=3.0, ge=0, le=600)  # below OFF this long: end
    cooldown_seconds: float = Field(default=10.0, ge=0, le=HOUR)  # no new start this soon after an end
    # cannot perceive (no face, no body, too dark, ...) this long: end, with that as the reason.
    # "no_face_seconds" is its older name, still read.
    blind_seconds: float = Field(default=5.0, ge=0, le=HOUR,
                                 validation_alias=AliasChoices("blind_seconds", "no_face_seconds"))

    @model_validator(mode="after")
    def _hysteresis(self) -> AlarmConfig:
        both = self.on_threshold is not None and self.off_threshold is not None
        if both and self.off_threshold > self.on_threshold:
            raise ValueError("off_threshold must not be above on_threshold")
        return self

    def thresholds(self, model_threshold: float) -> tuple[float, float]:
        """(on, off) thresholds, filling the unset ones from the model card's threshold."""
        on = self.on_threshold if self.on_threshold is not None else model_threshold
        # not max(0, on - 0.2): with ON at 0.2 or below, OFF was 0, which no score is below
        off = self.off_threshold if self.off_threshold is not None else max(on / 2, on - 0.2)
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
    username: MqttString | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    client_id: MqttString | None = None  # None: cryedge-<device id>
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    topic_prefix: TopicPrefix | None = None  # None: cryedge/<device id>
    discovery: bool = True
    discovery_prefix: TopicPrefix = "homeassistant"
    keepalive: int = Field(default=30, ge=5, le=3600)
    qos: Literal[1, 2] = 1  # for events; state and availability use 1
    connect_timeout: float = Field(default=10.0, gt=0, le=300)  # TCP and TLS of each attempt (in the background)
    reconnect_min_seconds: float = Field(default=1.0, gt=0, le=HOUR)
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=HOUR)
    state_interval: float = Field(default=5.0, ge=0, le=HOUR)  # probability updates at most this often
    stats_interval: float = Field(default=10.0, gt=0, le=DAY)  # diagnostics (fps, inference ms, face share)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # a URL here (with user:password@) passed the check, was in every line about the broker, and never connected
        if "@" in value or "://" in value:
            raise ValueError("a host name or address, not a URL: the user goes in username, the password in "
                             f"password_file (or ${PASSWORD_ENV})")
        if "/" in value or any(c.isspace() for c in value):
            raise ValueError("a host name or address (like homeassistant.local or 192.168.1.10), without / or spaces")
        if value.count(":") == 1:  # IPv6 addresses have two or more
            raise ValueError("a host name or address without a port: give the port as port = N")
        return value

    @model_validator(mode="after")
    def _reconnect_order(self) -> MqttConfig:
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise ValueError("reconnect_min_seconds must not be above reconnect_max_seconds")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.host)

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)


class OutboxConfig(Section):
    """Events not yet acknowledged by the broker, kept on disk across restarts."""

    path: Path = Field(default_factory=lambda: default_state_dir() / "outbox.sqlite3")
    max_events: int = Field(default=1000, ge=2, le=1_000_000)


class HealthConfig(Section):
    """The local HTTP health endpoint (``/health``, ``/stats``, ``/metrics``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)


class SnapshotConfig(Section):
    """The picture of a cry's start (and end, if asked) on ``<prefix>/snapshot``; off by default (edge.pictures)."""

    enabled: bool = False
    on_end: bool = False  # a picture at the end of an episode too
    landmarks: bool = True  # face and body points drawn on it
    probability: bool = True  # the probability written on it
    face: Literal["show", "blur", "crop"] = "show"  # blur the face, or send only the face's region
    max_width: int = Field(default=640, ge=64, le=4096)  # scaled down (never up) to fit
    max_height: int = Field(default=480, ge=64, le=4096)
    quality: int = Field(default=80, ge=10, le=100)  # JPEG quality


class LiveConfig(Section):
    """The live view (page and MJPEG) on the health server's host and port; off by default (edge.live).

    The token comes from ``$CRYEDGE_LIVE_TOKEN``, ``token_file`` or ``$CREDENTIALS_DIRECTORY/live_token``;
    never from this file, so a config that is shared or shown gives nobody the picture.
    """

    enabled: bool = False
    token_file: Path | None = None
    fps: float = Field(default=4.0, ge=0.2, le=15)  # frames a second to each viewer, at most
    max_viewers: int = Field(default=2, ge=1, le=8)  # at once; each MJPEG viewer holds a server thread
    max_width: int = Field(default=640, ge=64, le=1920)
    max_height: int = Field(default=480, ge=64, le=1920)
    quality: int = Field(default=70, ge=10, le=95)
    history_seconds: float = Field(default=300.0, ge=10, le=HOUR)  # how far back the chart reaches
    _token: SecretStr | None = PrivateAttr(default=None)

    @property
    def token(self) -> SecretStr | None:
        return self._token


class AudioSourceOptions(Section):
    """What every sound source takes; each type below adds its own options (like ``[source]``)."""

    stall_seconds: float = Field(default=5.0, gt=0, le=300)  # no sound for this long: reopen
    reopen_min_seconds: float = Field(default=1.0, gt=0, le=600)  # reopen back-off, doubling up to the max
    reopen_max_seconds: float = Field(default=30.0, gt=0, le=600)


class VideoSoundConfig(AudioSourceOptions):
    """The sound track of ``[source]`` itself: a camera stream's microphone, or the video file's audio."""

    type: Literal["video"] = "video"


class AlsaSoundConfig(AudioSourceOptions):
    """An ALSA capture device (USB microphone, I2S HAT): a card index, or a name ``arecord -L`` lists."""

    type: Literal["alsa"] = "alsa"
    device: int | str = "default"

    @field_validator("device")
    @classmethod
    def _card(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 31:  # ALSA has at most 32 cards (SNDRV_CARDS)
            raise ValueError("a card index is 0 to 31")
        return value


class FileSoundConfig(AudioSourceOptions):
    """The sound track of an audio or video file, paced like ``[source]`` (``realtime``)."""

    type: Literal["file"] = "file"
    path: Path
    realtime: bool | None = None  # at its own pace; None: as [source] (a video file's ``realtime``), else True


class StreamSoundConfig(AudioSourceOptions, StreamCredentials):
    """The sound track of an RTSP or HTTP stream (a microphone of its own, or a camera's audio-only URL).

    Its password as a camera's (``StreamCredentials``), from ``$CRYEDGE_MICROPHONE_PASSWORD``, ``password_file``,
    ``$CREDENTIALS_DIRECTORY/microphone_password``, ``password`` or the URL; ffmpeg gets it on a pipe only.
    """

    type: Literal["stream"] = "stream"
    url: str = Field(pattern=r"^(rtsps?|https?)://")
    transport: Literal["tcp", "udp"] = "tcp"  # RTP over the RTSP connection or over UDP (rtsp:// only)

    @field_validator("url")
    @classmethod
    def _stream(cls, url: str) -> str:
        return _url_scheme(url, ("rtsp", "rtsps", "http", "https"))


AudioSourceConfig = Annotated[VideoSoundConfig | AlsaSoundConfig | FileSoundConfig | StreamSoundConfig,
                              Field(discriminator="type")]


class AudioConfig(Section):
    """Hearing: a microphone or a sound track through an audio model; consumed by ``edge.audio``."""

    # auto: on when [source] is a video file with a sound track (the demo clip), else off
    enabled: bool | Literal["auto"] = "auto"
    source: AudioSourceConfig = Field(default_factory=VideoSoundConfig)

    @field_validator("source", mode="before")
    @classmethod
    def _video_by_default(cls, value: Any) -> Any:
        """``[audio.source]`` without a type is the camera's own sound track, as with no table at all."""
        if isinstance(value, dict) and "type" not in value:
            return {"type": "video", **value}
        return value
    model: Path = Field(default_factory=lambda: paths.bundled("models", "cry-audio-default.tflite"))
    num_threads: int = Field(default=1, ge=1, le=8)


class FusionConfig(Section):
    """How what is seen and what is heard make the one score the alarm follows; consumed by ``edge.fusion``.

    ``either``: the higher of the two (neither can hide the other's cry); ``mean``: weighted by
    ``audio_weight``; ``vision`` or ``audio``: that one alone (the other is still shown). A modality that
    cannot perceive (no face, no sound device) leaves the decision to the other in every mode but its own.
    """

    mode: Literal["either", "mean", "vision", "audio"] = "either"
    audio_weight: float = Field(default=0.5, ge=0, le=1)
    # when the sound decides, an episode starts after this long above the threshold instead of
    # [alarm] min_on_seconds (the shorter wins); None: the audio model card's (audio.min_on_seconds)
    audio_min_on_seconds: float | None = Field(default=None, ge=0, le=600)


class Config(Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    source: SourceConfig = Field(default_factory=FileSourceConfig)
    landmarks: LandmarksConfig = Field(default_factory=LandmarksConfig)
    exposure: ExposureConfig = Field(default_factory=ExposureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    alarm: AlarmConfig = Field(default_factory=AlarmConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    snapshot: SnapshotConfig = Field(default_factory=SnapshotConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)

    @field_validator("source", mode="before")
    @classmethod
    def _source_shorthand(cls, value: Any) -> Any:
        return source_table(value)

    @model_validator(mode="after")
    def _derived(self) -> Config:
        # fill the defaults that depend on the device id, so `config show` prints what is used
        if self.mqtt.client_id is None:
            self.mqtt.client_id = f"cryedge-{self.device.id}"
        if self.mqtt.topic_prefix is None:
            self.mqtt.topic_prefix = f"cryedge/{self.device.id}"
        return self


# ----------------------------------------------------------------------------- loading


def _where(config_path: Path | None) -> str:
    return str(config_path) if config_path is not None else "configuration"


def _describe(error: dict, data: Any, model: type[BaseModel]) -> str:
    """``key.path: message``, with a "did you mean" for an unknown key or source type.

    A source's type is part of pydantic's location (``source.rtsp.url``) but not of the file's keys.
    """
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden":
        keys, section = _walk(model, loc[:-1])
        keys.append(loc[-1])
        key = ".".join(keys)
        known = [name for name in getattr(section, "model_fields", {}) if name != "type"] if section else []
        close = difflib.get_close_matches(keys[-1], known, n=1)
        hint = f" (did you mean {'.'.join(keys[:-1] + close)}?)" if close else ""
        kind = section.model_fields["type"].default if section and "type" in section.model_fields else None
        what = f"not an option of type {kind}" if isinstance(kind, str) else "unknown key"
        return f"{key}: {what}{hint}"
    keys, section = _walk(model, loc)
    key = ".".join(keys) or "(top level)"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = error.get("ctx", {}).get("discriminator", "'type'").strip("'")
        tags = [tag.strip(" '") for tag in error.get("ctx", {}).get("expected_tags", "").split(",") if tag.strip()]
        tag = str(error.get("ctx", {}).get("tag", ""))
        if error["type"] == "union_tag_not_found":
            return f"{key}.{discriminator}: missing (one of {', '.join(tags) or 'the source types'})"
        close = difflib.get_close_matches(tag, tags, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{key}.{discriminator}: {tag!r} is not one of {', '.join(tags)}{hint}"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):  # not "a valid ... MqttConfig"
        return f"{key}: must be a table ([{key}] or {keys[-1] if keys else key} = {{ ... }}), not {_toml_kind(error['input'])}"
    if error["type"] in ("tuple_type", "list_type"):
        return f"{key}: must be an array ([...]), not {_toml_kind(error['input'])}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}"


def _toml_kind(value: Any) -> str:
    """What TOML calls the kind of ``value`` (not the value: it may be a password)."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
             (dict, "a table"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "a date or time")


def _walk(model: type[BaseModel], loc: list[str]) -> tuple[list[str], type[BaseModel] | None]:
    """The file's key path for a pydantic location, and the model of its last table."""
    keys: list[str] = []
    section: Any = model
    members: dict[str, type[BaseModel]] = {}
    for part in loc:
        if part in members:  # a discriminated union's tag: pydantic's, not the file's
            section, members = members[part], {}
            continue
        keys.append(part)
        field = getattr(section, "model_fields", {}).get(part) if section is not None else None
        section = _model_of(field.annotation) if field else None
        members = _union_members(field.annotation) if field else {}
    return keys, section


def _union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """``{type tag: model}`` of a discriminated union of sections."""
    members = {}
    for arg in getattr(annotation, "__args__", ()):
        for inner in (arg, *getattr(arg, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel) and "type" in inner.model_fields:
                tag = inner.model_fields["type"].default
                if isinstance(tag, str):
                    members[tag] = inner
    return members


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


# keys naming a model file, which may be fetched later but is never a folder
MODEL_FILES = {("model", "path"), ("audio", "model"), ("landmarks", "face_model"), ("landmarks", "pose_model")}


def expand_user(path: Path | str, key: str) -> Path:
    """``path`` with ``~`` or ``~name`` expanded; a ConfigError naming ``key`` when there is no such user."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~pi in a config from an older guide: Raspberry Pi OS has no user pi since Bookworm
        raise ConfigError(f"{key}: {path}: there is no user {Path(path).parts[0][1:] or '(home)'} on this "
                          "machine for ~ to name") from None


def _resolve_paths(config: Config, base: Path, where: str) -> None:
    """Relative paths in a config file mean relative to that file's folder; ``~`` is expanded."""
    places = [(config.landmarks, "face_model", "landmarks"), (config.landmarks, "pose_model", "landmarks"),
              (config.model, "path", "model"), (config.audio, "model", "audio"), (config.outbox, "path", "outbox"),
              (config.live, "token_file", "live"), (config.mqtt, "password_file", "mqtt")]
    if config.mqtt.tls is not None:
        places += [(config.mqtt.tls, name, "mqtt.tls") for name in ("ca_file", "certfile", "keyfile")]
    if isinstance(config.audio.source, FileSoundConfig):
        places.append((config.audio.source, "path", "audio.source"))
    if isinstance(config.source, FileSourceConfig):
        places.append((config.source, "path", "source"))
    for table, stream in (("source", config.source), ("audio.source", config.audio.source)):
        if isinstance(stream, StreamCredentials):
            places.append((stream, "password_file", table))
    for section, name, table in places:
        path = getattr(section, name)
        if path is not None:
            try:
                path = expand_user(path, f"{table}.{name}")
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
            path = path if path.is_absolute() else base / path
            if (table, name) in MODEL_FILES and path.is_dir():  # it said "model file not found" (or "missing") at start
                raise ConfigError(f"{where}: {table}.{name}: {path} is a directory, not a model file")
            if (table, name) == ("outbox", "path") and path.is_dir():  # the events went to memory only, said vaguely
                raise ConfigError(f"{where}: outbox.path: {path} is a directory; name the file in it, such as "
                                  f"{path / 'outbox.sqlite3'}")
            setattr(section, name, path)


def _resolve_password(section: BaseModel, key: str, where: str, environ, variable: str, credential: str) -> None:
    """Fill ``section.password``: ``$variable``, then ``password_file``, then the systemd credential, then as given.

    As given, it must not be ``config show``'s mask: a shown config saved as the config sent ``********`` to the
    broker or camera, refused with no hint why. Where another origin wins, the mask in the file is not used.
    """
    _fill_password(section, key, where, environ, variable, credential)
    if section.password is not None and section.password.get_secret_value() == MASK:
        raise ConfigError(f"{where}: {key}.password: is {MASK}, the mask `cryedge config show` prints in place of a "
                          "password; write the real one (or set password_file)")


def _fill_password(section: BaseModel, key: str, where: str, environ, variable: str, credential: str) -> None:
    if environ.get(variable):
        section.password = SecretStr(environ[variable])
        return
    if section.password_file is not None:
        text = settings_text(section.password_file, f"{where}: {key}.password_file: cannot read {section.password_file}")
        section.password = SecretStr(text.rstrip("\r\n"))
        return
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / credential).is_file():
        path = Path(credentials) / credential
        # under systemd: exit 3, not a restart loop on a traceback
        text = settings_text(path, f"{where}: {key}.password: cannot read the systemd credential {path}")
        section.password = SecretStr(text.rstrip("\r\n"))


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
        data = _read_toml(config_path, where)
    overrides = dict(overrides or {})
    source = dict(overrides.pop("source", None) or {})
    if "uri" in source:  # --source: another camera, not a merge into this one
        try:
            data["source"] = _replace_source(data.get("source", {}), source.pop("uri"))
        except ValueError as error:
            raise ConfigError(f"{where}: source: {error}") from None
        if data["source"]["type"] == "file":  # a path on the command line is relative to where it was typed
            data["source"]["path"] = str(Path.cwd() / expand_user(data["source"]["path"], "--source"))
    if source:
        overrides["source"] = source
    if "source" in (overrides.get("audio") or {}) and isinstance(data.get("audio"), dict):
        data["audio"] = {k: v for k, v in data["audio"].items() if k != "source"}  # --audio-source: another sound
    if overrides:
        data = _merge(data, overrides)
    holder = _holds_nul(data)
    if holder is not None:  # TOML spells it \u0000; every path, host and device name then raised ValueError
        raise ConfigError(f"{where}: {holder}: holds a NUL character (\\u0000), which no path, name or host can")
    _drop_ignored_keys(data, where)
    try:
        config = Config.model_validate(data)
    except ValidationError as error:
        problems = error.errors()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{where}: {_describe(problems[0], data, Config)}{more}") from None
    _resolve_paths(config, config_path.resolve().parent if config_path is not None else Path.cwd(), where)
    _resolve_password(config.mqtt, "mqtt", where, environ, PASSWORD_ENV, CREDENTIAL_NAME)
    if config.mqtt.password is not None:  # from a file or the environment, after validation: checked here
        try:
            _mqtt_string(config.mqtt.password.get_secret_value())
        except ValueError as error:
            raise ConfigError(f"{where}: mqtt.password: {error}") from None
    if isinstance(config.source, NetworkSourceOptions) and config.source.username is not None:
        _resolve_password(config.source, "source", where, environ, CAMERA_PASSWORD_ENV, CAMERA_CREDENTIAL_NAME)
    if isinstance(config.audio.source, StreamSoundConfig) and config.audio.source.username is not None:
        _resolve_password(config.audio.source, "audio.source", where, environ, MICROPHONE_PASSWORD_ENV,
                          MICROPHONE_CREDENTIAL_NAME)
    _check_tls_files(config, where)
    _check_no_camera(config, where)
    if config.live.enabled:
        _resolve_live_token(config, where, environ)
    return config


def _holds_nul(data: Any, keys: tuple[str, ...] = ()) -> str | None:
    """The key path of the first key or string value in ``data`` with a NUL character in it, or None."""
    if isinstance(data, str):
        return ".".join(keys) or "(top level)" if "\0" in data else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        path = (*keys, str(key).replace("\0", "\\u0000"))
        if "\0" in str(key):
            return ".".join(path)
        found = _holds_nul(value, path)
        if found is not None:
            return found
    return None


def _drop_ignored_keys(data: dict, where: str) -> None:
    """Take out the ``IGNORED_KEYS`` a config still has, with one warning each."""
    for (table, key), why in IGNORED_KEYS.items():
        section = data.get(table)
        if isinstance(section, dict) and key in section:
            del section[key]
            log.warning("%s: %s.%s is ignored: %s", where, table, key, why)


def no_camera_problem(config: Config) -> str | None:
    """Why ``[source] type = "none"`` (no camera) cannot run as configured, or None.

    Without a camera the sound is all there is: hearing must be on (``auto`` counts), from a source of its own.
    """
    if config.source.type != "none":
        return None
    if config.audio.enabled is False:
        return 'source.type "none" (no camera) needs [audio] enabled = true: there would be nothing to watch or hear'
    if config.audio.source.type == "video":
        return ('source.type "none" (no camera) has no sound track: set [audio.source] type = "alsa" (a microphone), '
                '"file" or "stream" (or run --audio-source)')
    if config.fusion.mode == "vision":
        return 'fusion.mode "vision" with source.type "none" (no camera): use "audio" or "either"'
    for section in ("snapshot", "live"):
        if getattr(config, section).enabled:
            return f'{section}.enabled: there is no picture with source.type "none" (no camera)'
    return None


def _check_no_camera(config: Config, where: str) -> None:
    problem = no_camera_problem(config)
    if problem is not None:
        raise ConfigError(f"{where}: {problem}")
    if config.source.type == "none":
        config.audio.enabled = True  # "auto" with no camera: listening is the whole job (config show says so)


def _resolve_live_token(config: Config, where: str, environ) -> None:
    """The live view's token: ``$CRYEDGE_LIVE_TOKEN``, then ``token_file``, then the systemd credential; required."""
    live = config.live
    if not config.health.enabled:
        raise ConfigError(f"{where}: live.enabled: the live view is served by the health server; "
                          "set [health] enabled = true")
    token, origin = environ.get(LIVE_TOKEN_ENV), f"${LIVE_TOKEN_ENV}"
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    path = live.token_file
    if not token and path is None and credentials and (Path(credentials) / LIVE_TOKEN_CREDENTIAL).is_file():
        path = Path(credentials) / LIVE_TOKEN_CREDENTIAL
    if not token and path is not None:
        origin = str(path)
        token = settings_text(path, f"{where}: live.token_file: cannot read {path}").strip()
    if not token:
        raise ConfigError(f"{where}: live.enabled needs a token: set live.token_file, ${LIVE_TOKEN_ENV} or the "
                          f"systemd credential {LIVE_TOKEN_CREDENTIAL} (e.g. `openssl rand -hex 16 > FILE`)")
    if len(token) < MIN_LIVE_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"{where}: the live view's token from {origin} must be at least {MIN_LIVE_TOKEN} "
                          "printable characters without spaces (e.g. `openssl rand -hex 16`)")
    live._token = SecretStr(token)


# a config, a password or a token is a few KiB; more is a wrong path (a disk image, a log), not settings
MAX_SETTINGS_BYTES = 1 << 20


def read_settings_file(path: Path, limit: int = MAX_SETTINGS_BYTES) -> bytes:
    """The bytes of the small regular file at ``path``; an OSError whose ``strerror`` says why not.

    A FIFO, ``/dev/zero`` or a terminal given as a config or a password file would block the start (or
    ``config check``) forever, or fill the memory: opened without blocking, anything but a regular file is refused
    before a byte is read, and at most ``limit`` bytes are read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "not a file"
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        raw = file.read(limit + 1)
    if len(raw) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB, too large to be a settings file", str(path))
    return raw


def settings_text(path: Path, what: str) -> str:
    """The UTF-8 text of the small settings file at ``path`` (``read_settings_file``: a password, a token); a
    ConfigError "``what``: why not" when it cannot be read."""
    try:
        return read_settings_file(path).decode()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{what}: {reason}") from None


def toml_text(raw: bytes, where: str) -> str:
    """A TOML file's bytes as text; a ConfigError naming the first byte that is not UTF-8, and its line."""
    try:
        return raw.decode("utf-8-sig")  # Notepad's "UTF-8" starts with a byte order mark, which TOML does not read
    except UnicodeDecodeError as error:  # a laptop's editor saved it in another encoding
        line = raw[:error.start].count(b"\n") + 1
        raise ConfigError(f"{where}: not UTF-8 text: byte 0x{raw[error.start]:02x} on line {line} "
                          "(TOML files are UTF-8; re-save it as UTF-8)") from None


def _read_toml(config_path: Path, where: str) -> dict:
    try:
        raw = read_settings_file(config_path)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot read: {error.strerror}") from None
    text = toml_text(raw, where)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{where}: TOML syntax error: {error}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(f"{where}: arrays or tables nested too deeply to read") from None


def _check_tls_files(config: Config, where: str) -> None:
    """Missing certificate files are a configuration error now, not a TLS failure at the first connect."""
    if config.mqtt.tls is None:
        return
    tls = config.mqtt.tls
    for name in ("ca_file", "certfile", "keyfile"):
        path = getattr(tls, name)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{where}: mqtt.tls.{name}: cannot read {path}")
    # loaded as paho will load them: a file that is no certificate or key failed only at the first connect,
    # as a broker error that systemd restarted every 10 s; it is the config's, and `config check` says so now
    import ssl

    name = "ca_file"
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.certfile is not None:
            name = "certfile and keyfile"
            # a key with a passphrase: refused here, as the service cannot type one (OpenSSL would ask the terminal)
            context.load_cert_chain(tls.certfile, tls.keyfile, password=lambda: b"")
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{where}: mqtt.tls.{name}: not a PEM certificate{'' if name == 'ca_file' else ' and key'} "
                          f"OpenSSL can load ({reason})") from None


def parse_broker_url(url: str) -> dict:
    """``mqtt://user@host:port`` (or ``mqtts://`` for TLS) as an ``[mqtt]`` override table.

    A password in the URL is refused: it would show in ``ps`` and shell history.
    """
    try:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    except ValueError as error:  # "Invalid IPv6 URL": a bracket not closed
        raise ConfigError(f"--broker: {error} (mqtt://[user@]host[:port])") from None
    if parts.password is not None:  # first: every other message shows the URL
        raise ConfigError(f"--broker: no password in the URL; use ${PASSWORD_ENV} or mqtt.password_file")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"--broker {url}: scheme must be mqtt:// or mqtts://")
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


def parse_audio_source(text: str) -> dict[str, Any]:
    """``--audio-source``: ``alsa[:DEVICE]`` (a card index or an ALSA name), ``video`` (the camera's own sound),
    an ``rtsp://`` or ``http://`` URL, or a sound or video file, as an ``[audio.source]`` table."""
    text = str(text).strip()
    if not text:
        raise ConfigError("--audio-source is empty")
    head, colon, device = text.partition(":")
    if head == "alsa":
        return {"type": "alsa", **({"device": int(device) if device.isdigit() else device} if colon and device else {})}
    if text == "video":
        return {"type": "video"}
    if text.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https"):
        if ":" in (split_userinfo(text)[1] or ""):  # a new option: no old command line to keep working
            raise ConfigError("--audio-source: no password in the URL (every local user reads it in ps); give "
                              f"rtsp://USER@HOST/... and the password in ${MICROPHONE_PASSWORD_ENV} or "
                              "[audio.source] password_file")
        return {"type": "stream", "url": text}
    return {"type": "file", "path": str(Path.cwd() / expand_user(text, "--audio-source"))}


def cli_overrides(source: str | None = None, broker: str | None = None, audio_source: str | None = None) -> dict:
    """The override dict for ``cryedge run --source SRC --broker URL --audio-source SRC``.

    A camera password in ``--source`` still works (an old command line must not stop a monitor), with
    one warning: every local user reads it in ``ps`` and /proc/PID/cmdline for as long as the run lasts.
    """
    overrides: dict[str, Any] = {}
    if source is not None:
        if (split_userinfo(source)[1] or "").partition(":")[2]:
            log.warning("--source: the camera password in the URL is visible to every local user (ps, "
                        "/proc/PID/cmdline) and kept in shell history; give the URL without it "
                        "(rtsp://USER@HOST/...) and the password in $%s or [source] password_file",
                        CAMERA_PASSWORD_ENV)
        overrides["source"] = {"uri": source}
    if audio_source is not None:  # naming a sound to hear turns hearing on
        overrides["audio"] = {"enabled": True, "source": parse_audio_source(audio_source)}
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
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    # TOML's basic strings hold no control character but tab: escaped, so that what is shown reads back
    return '"' + "".join(c if c == "\t" or not (ord(c) < 0x20 or c == "\x7f") else f"\\u{ord(c):04x}" for c in text) + '"'


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
            elif key == "url" and isinstance(value, str):  # a camera's or a microphone's: its query may hold a password
                lines.append(f"{key} = {_toml_value(mask_url(value))}")
            elif isinstance(value, (str, Path)):  # a file: URL's user:password@ stays in the path it is read as
                lines.append(f"{key} = {_toml_value(mask_password(str(value)))}")
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
    model = config.audio.model if config.source.type == "none" else config.model.path  # no camera: the ear alone
    return f"device {config.device.id}; source {config.source.display()}; model {model}; {broker}"


# ----------------------------------------------------------------------------- commands


def _check(args) -> int:
    config = load_config(_config_file(args, required=True))
    print(f"ok: {summary(config)}")
    return 0


def _show(args) -> int:
    print(to_toml(load_config(_config_file(args, required=False))), end="")
    return 0


def _config_file(args, required: bool) -> Path | None:
    """The file ``FILE`` or ``--config FILE`` names (either spelling, as ``run`` takes ``--config``); a usage
    error (exit 2) when both name different files, or when ``required`` and neither is given."""
    named = [path for path in (args.file, args.config) if path is not None]
    if len({path.resolve() for path in named}) > 1:
        args.usage_error(f"FILE {args.file} and --config {args.config} name different files: give one")
    if required and not named:
        args.usage_error("give the config file: FILE or --config FILE")
    return named[0] if named else None


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("config", help="check or show the configuration")
    commands = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = commands.add_parser("check", help="validate a config file (exit code 3 if it is invalid)")
    show = commands.add_parser("show", help="print the effective configuration as TOML, secrets masked")
    for command, handler, default in ((check, _check, ""), (show, _show, " (default: built-in defaults)")):
        command.add_argument("file", type=Path, nargs="?", metavar="FILE", help=f"the config file{default}")
        command.add_argument("--config", type=Path, metavar="FILE", help="the same, as run takes it")
        command.set_defaults(handler=handler, usage_error=command.error)
