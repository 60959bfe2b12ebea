"""The configuration file as a user meets it: defaults, errors that say where, secrets kept secret."""

import re
import socket
import tomllib
from pathlib import Path

import pytest

from edge import paths
from edge.cli import main
from edge.config import Config, cli_overrides, default_state_dir, load_config, sanitize_id, to_toml
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cryedge.toml"


def write(tmp_path, text, name="cryedge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_file_runs_the_demo_clip_through_the_default_model_without_a_broker():
    config = load_config(None, environ={})
    assert config.source.type == "file" and config.source.path == paths.data_file("demo.mp4")
    assert config.model.path == paths.default_model()
    assert config.landmarks.face_model.parent == paths.landmarks_dir()
    assert not config.mqtt.enabled
    assert config.device.id == sanitize_id(socket.gethostname().split(".")[0])
    assert config.mqtt.topic_prefix == f"cryedge/{config.device.id}"
    assert config.mqtt.client_id == f"cryedge-{config.device.id}"


def test_device_ids_are_safe_topic_levels():
    assert sanitize_id("Baby's Room") == "baby-s-room"
    assert sanitize_id("+#/") == "cryedge"


def test_the_example_config_is_valid_and_runs_the_camera_without_a_broker_until_one_is_set():
    config = load_config(EXAMPLE, environ={})
    assert config.source.type == "picamera2" and not config.mqtt.enabled
    with_broker = load_config(EXAMPLE, cli_overrides(broker="mqtt://cryedge@homeassistant.local"), environ={})
    assert with_broker.mqtt.enabled and with_broker.mqtt.port == 1883


def test_unknown_key_names_the_file_the_key_and_a_likely_fix(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "broker.lan"\nprot = 1884\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert str(raised.value) == f"{path}: mqtt.prot: unknown key (did you mean mqtt.port?)"


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cryedge.toml: alarms: unknown key \(did you mean alarm\?\)"):
        load_config(write(tmp_path, "[alarms]\nhold_seconds = 2\n"), environ={})


def test_bad_value_names_the_key(tmp_path):
    path = write(tmp_path, '[mqtt]\nport = "eighty"\n')
    with pytest.raises(ConfigError, match=r"^/.*cryedge.toml: mqtt.port: Input should be a valid integer"):
        load_config(path, environ={})


def test_out_of_range_and_inconsistent_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="mqtt.port: Input should be less than or equal to 65535"):
        load_config(write(tmp_path, "[mqtt]\nport = 70000\n"), environ={})
    for text in ("on_threshold = 0", "on_threshold = 1.0", "off_threshold = 0"):  # an alarm always on, never on, never off
        with pytest.raises(ConfigError, match=r"alarm\.(on|off)_threshold: Input should be (greater|less) than"):
            load_config(write(tmp_path, f"[alarm]\n{text}\n", "edge.toml"), environ={})
    with pytest.raises(ConfigError, match="alarm: .*off_threshold must not be above on_threshold"):
        load_config(write(tmp_path, "[alarm]\non_threshold = 0.5\noff_threshold = 0.6\n"), environ={})
    with pytest.raises(ConfigError, match="mqtt.protocol"):
        load_config(write(tmp_path, '[mqtt]\nprotocol = "3"\n'), environ={})


def test_toml_syntax_error_gives_the_line(tmp_path):
    path = write(tmp_path, '[device]\nid = "cam"\n[mqtt\nhost = "x"\n')
    with pytest.raises(ConfigError, match=r"cryedge.toml: TOML syntax error: .*line 3"):
        load_config(path, environ={})


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="nothere.toml: no such file"):
        load_config(tmp_path / "nothere.toml", environ={})


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, '[model]\npath = "models/cry.tflite"\n[source]\nuri = "clips/a.mp4"\n'
                           '[outbox]\npath = "~/outbox.sqlite3"\n')
    config = load_config(path, environ={})
    assert config.model.path == tmp_path / "models" / "cry.tflite"
    assert config.source.path == tmp_path / "clips" / "a.mp4"
    assert config.outbox.path == Path.home() / "outbox.sqlite3"


@pytest.mark.parametrize(("uri", "typed"), [
    ("picamera2", {"type": "picamera2", "stream": "main"}),
    ("picamera2:lores", {"type": "picamera2", "stream": "lores"}),
    ("0", {"type": "v4l2", "device": 0}),
    ("/dev/video0", {"type": "v4l2", "device": "/dev/video0"}),
    ("rtsp://cam.lan/stream", {"type": "rtsp", "url": "rtsp://cam.lan/stream"}),
    ("https://cam.lan/video.mjpg", {"type": "http", "url": "https://cam.lan/video.mjpg"}),
])
def test_the_uri_shorthand_is_the_typed_source_it_names(tmp_path, uri, typed):
    config = load_config(write(tmp_path, f'[source]\nuri = "{uri}"\n'), environ={})
    assert config.source.model_dump(include=set(typed)) == typed


def test_outbox_lives_in_the_systemd_state_directory():
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/cryedge"}) == Path("/var/lib/cryedge")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/cryedge")


# ----------------------------------------------------------------------------- secrets


def test_password_sources_in_order_of_precedence(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credentials")
    with_file = write(tmp_path, '[mqtt]\nhost = "b"\npassword = "in-toml"\npassword_file = "pw"\n', "a.toml")
    without_file = write(tmp_path, '[mqtt]\nhost = "b"\npassword = "in-toml"\n', "b.toml")

    def password(path, environ):
        return load_config(path, environ=environ).mqtt.password.get_secret_value()

    assert password(with_file, {"CRYEDGE_MQTT_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}) == "from-env"
    assert password(with_file, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-file"
    assert password(without_file, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credentials"
    assert password(without_file, {}) == "in-toml"


def test_unreadable_password_file_names_the_key(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "b"\npassword_file = "/nonexistent/pw"\n')
    with pytest.raises(ConfigError, match=r"cryedge.toml: mqtt.password_file: cannot read /nonexistent/pw"):
        load_config(path, environ={})


def test_the_password_never_shows(tmp_path):
    config = load_config(write(tmp_path, '[mqtt]\nhost = "b"\npassword = "hunter2"\n'), environ={})
    assert "hunter2" not in repr(config) and "hunter2" not in str(config.mqtt)
    assert "hunter2" not in to_toml(config)


# ----------------------------------------------------------------------------- the command line


def test_config_check_prints_ok_and_a_summary(tmp_path, capsys):
    path = write(tmp_path, '[device]\nid = "cam1"\n[mqtt]\nhost = "broker.lan"\nusername = "cry"\n')
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: device cam1;") and "mqtt broker.lan:1883 as cry" in out


def test_config_check_of_a_bad_file_is_one_line_and_exit_code_3(tmp_path, capsys):
    path = write(tmp_path, "[mqtt]\nhots = 1\n")
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert err == f"cryedge: {path}: mqtt.hots: unknown key (did you mean mqtt.host?)\n"


@pytest.mark.parametrize("spelling", [["FILE"], ["--config", "FILE"], ["FILE", "--config", "FILE"]])
def test_config_check_and_show_take_the_file_either_way(tmp_path, capsys, monkeypatch, spelling):
    """`config check --config FILE` was a usage error (it took FILE only) and `config show FILE` too (--config only)."""
    path = write(tmp_path, '[device]\nid = "cam1"\n')
    monkeypatch.chdir(tmp_path)
    args = [str(path) if a == "FILE" else a for a in spelling]
    if len(args) == 3:
        args[2] = "./cryedge.toml"  # the same file, spelled otherwise
    assert main(["config", "check", *args]) == 0
    assert capsys.readouterr().out.startswith("ok: device cam1;")
    assert main(["config", "show", *args]) == 0
    assert tomllib.loads(capsys.readouterr().out)["device"]["id"] == "cam1"


@pytest.mark.parametrize("action", ["check", "show"])
def test_config_file_and_a_different_config_option_is_a_usage_error_naming_both(tmp_path, capsys, action):
    first, second = write(tmp_path, "", "a.toml"), write(tmp_path, "", "b.toml")
    with pytest.raises(SystemExit) as stopped:
        main(["config", action, str(first), "--config", str(second)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"cryedge config {action}: error: FILE {first} and --config {second} name different files: give one"


def test_config_check_without_a_file_says_both_ways_to_give_it(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["config", "check"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "cryedge config check: error: give the config file: FILE or --config FILE")


@pytest.mark.parametrize("value", ["4", "0"])
def test_landmarks_num_threads_of_an_old_config_is_ignored_with_one_warning(tmp_path, capsys, value):
    """MediaPipe Tasks has no thread count: the key was accepted and silently did nothing. An old config
    still loads (an error would crash-loop the service), with one line saying so; config show drops it."""
    path = write(tmp_path, f"[landmarks]\nnum_threads = {value}\npose_every = 3\n")
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ")
    assert err == (f"WARNING edge.config: {path}: landmarks.num_threads is ignored: MediaPipe Tasks has no thread "
                   "count (each landmarker runs its model on one core); remove it, and bound cores with taskset "
                   "or systemd's CPUAffinity=\n")
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert "num_threads" not in shown["landmarks"] and shown["landmarks"]["pose_every"] == 3


def test_config_show_prints_toml_that_loads_back_with_secrets_masked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRYEDGE_MQTT_PASSWORD", "s3cret")
    path = write(tmp_path, '[mqtt]\nhost = "broker.lan"\nusername = "cry"\n[mqtt.tls]\n'
                           '[landmarks]\nroi = [0.1, 0.2, 0.9, 1.0]\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and 'password = "********"' in out
    shown = tomllib.loads(out)
    assert shown["mqtt"]["host"] == "broker.lan" and shown["mqtt"]["tls"] == {"insecure": False}
    reloaded = Config.model_validate(shown)
    original = load_config(path, environ={})
    assert reloaded.model_dump(exclude={"mqtt": {"password"}}) == original.model_dump(exclude={"mqtt": {"password"}})


def test_broker_url_overrides_the_file(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "old"\nport = 1883\n')
    config = load_config(path, cli_overrides(broker="mqtt://cry@broker.lan:1884", source="/dev/video2"), environ={})
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("broker.lan", 1884, "cry")
    assert config.source.device == "/dev/video2" and config.mqtt.tls is None
    secure = load_config(None, cli_overrides(broker="mqtts://broker.lan"), environ={})
    assert secure.mqtt.tls is not None and secure.mqtt.effective_port == 8883


@pytest.mark.parametrize("url, problem", [
    ("mqtt://cry:hunter2@broker.lan", "no password in the URL"),
    ("http://broker.lan", "scheme must be"),
    ("mqtt://broker.lan:99999", "port must be a number"),
    ("https://cry:hunter2@broker.lan", "no password in the URL"),  # the scheme's message showed the URL whole
])
def test_bad_broker_urls_are_refused(url, problem):
    with pytest.raises(ConfigError, match=problem) as raised:
        cli_overrides(broker=url)
    assert "hunter2" not in str(raised.value)


def test_config_show_without_a_file_prints_the_defaults(capsys):
    assert main(["config", "show"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["source"]["type"] == "file" and shown["source"]["path"] == str(paths.data_file("demo.mp4"))
    assert "host" in shown["mqtt"] and shown["mqtt"]["host"] == ""


def test_missing_tls_files_are_config_errors(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "b"\n[mqtt.tls]\nca_file = "ca.crt"\n')
    with pytest.raises(ConfigError, match=rf"cryedge.toml: mqtt.tls.ca_file: cannot read {tmp_path}/ca.crt"):
        load_config(path, environ={})
    from mqtt import make_certificates

    ca, _, _ = make_certificates(tmp_path)
    assert load_config(path, environ={}).mqtt.tls.ca_file == ca == tmp_path / "ca.crt"


@pytest.mark.parametrize("tls", ['ca_file = "notes.txt"', 'ca_file = "certs"', 'ca_file = "certs/ca.crt"\n'
                                 'certfile = "notes.txt"\nkeyfile = "certs/server.key"',
                                 'certfile = "certs/server.crt"\nkeyfile = "certs/ca.key"',
                                 'certfile = "certs/server.crt"\nkeyfile = "locked.key"'])
def test_tls_files_that_are_no_certificate_or_key_are_config_errors(tmp_path, capsys, tls):
    """They passed config check (readable was all it asked), then failed at the first connect as a broker error,
    exit 6, which systemd restarts every 10 s for ever. A key with a passphrase is one: the service cannot type it."""
    import subprocess

    from mqtt import make_certificates

    make_certificates(tmp_path / "certs")
    (tmp_path / "notes.txt").write_text("the broker's address is 192.168.1.10\n")
    subprocess.run(["openssl", "pkey", "-in", str(tmp_path / "certs" / "server.key"), "-aes256", "-passout", "pass:pw",
                    "-out", str(tmp_path / "locked.key")], check=True, capture_output=True)
    path = write(tmp_path, f'[mqtt]\nhost = "b"\n[mqtt.tls]\n{tls}\n')
    assert main(["config", "check", str(path)]) == 3
    [line] = capsys.readouterr().err.splitlines()
    key = "mqtt.tls.ca_file" if "certfile" not in tls else "mqtt.tls.certfile and keyfile"
    assert line.startswith(f"cryedge: {path}: {key}: not a PEM certificate"), line
    good = write(tmp_path, '[mqtt]\nhost = "b"\n[mqtt.tls]\nca_file = "certs/ca.crt"\ncertfile = "certs/server.crt"\n'
                           'keyfile = "certs/server.key"\n', "good.toml")
    assert main(["config", "check", str(good)]) == 0


# ----------------------------------------------------------------------------- numbers and topics


def test_a_config_file_that_is_not_utf8_is_one_line_with_its_line_number(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[device]\nname = "Chambre de bébé"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text: byte 0xe9 on line 2"):
        load_config(path, environ={})


# the keys a typed table cannot do without, by (table, type), so that the walk can load each type
REQUIRED_KEYS = {
    ("source", "rtsp"): 'url = "rtsp://cam.lan/live"\n',
    ("source", "http"): 'url = "http://cam.lan/video.mjpg"\n',
    ("audio.source", "file"): 'path = "sound.wav"\n',
    ("audio.source", "stream"): 'url = "rtsp://cam.lan/live"\n',
}


def numeric_fields():
    """(table, its type and required keys as TOML, key, is an int) for every number a config file can hold.

    Tables that are a union of types (``[source]``, ``[audio.source]``) are walked once a type.
    """
    import typing

    from edge.config import Section

    def members(annotation):
        kinds = {arg for arg in (annotation, *typing.get_args(annotation)) if isinstance(arg, type)}
        return [arg for arg in kinds if issubclass(arg, Section)]

    def tables(table, annotation):
        typed = [model for model in members(annotation) if isinstance(model.model_fields.get("type") and
                                                                       model.model_fields["type"].default, str)]
        if len(typed) > 1:
            for model in typed:
                tag = model.model_fields["type"].default
                yield table, model, f'type = "{tag}"\n' + REQUIRED_KEYS.get((table, tag), ""), tag
        else:
            yield from ((table, model, "", "") for model in members(annotation)[:1])

    sections = [entry for name, field in Config.model_fields.items() for entry in tables(name, field.annotation)]
    found = []
    while sections:
        table, model, head, tag = sections.pop()
        for key, field in model.model_fields.items():
            kinds = {arg for arg in (field.annotation, *typing.get_args(field.annotation)) if isinstance(arg, type)}
            if members(field.annotation):
                sections.extend(tables(f"{table}.{key}", field.annotation))
            elif {int, float} & kinds and bool not in kinds:
                found.append((table, head, key, float not in kinds, tag))
            elif any(typing.get_origin(arg) is tuple for arg in (field.annotation, *typing.get_args(field.annotation))):
                found.append((table, head, key, None, tag))  # a list of numbers (landmarks.roi)
    return found


NUMERIC_FIELDS = numeric_fields()


def test_the_walk_finds_the_numbers_it_should():
    keys = {f"{table}.{key}" for table, _, key, _, _ in NUMERIC_FIELDS}
    assert {"mqtt.connect_timeout", "model.num_threads", "alarm.hold_seconds", "source.fps",
            "source.stall_seconds", "landmarks.roi", "health.port", "outbox.max_events"} <= keys
    assert {tag for table, _, key, _, tag in NUMERIC_FIELDS if f"{table}.{key}" == "source.stall_seconds"} == \
        {"picamera2", "v4l2", "rtsp", "http", "file"}


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "1e400", "1e308", "-1e308", "9007199254740993"])
@pytest.mark.parametrize(("table", "head", "key", "integer", "tag"), NUMERIC_FIELDS,
                         ids=[f"{table}{f'[{tag}]' if tag else ''}.{key}" for table, _, key, _, tag in NUMERIC_FIELDS])
def test_every_number_is_finite_and_in_a_range_that_means_something(tmp_path, table, head, key, integer, tag, bad):
    """inf, nan, 1e400 (TOML reads it as inf) and huge values are errors that name the key, never a crash or a silent off."""
    value = f"[{bad}, 0.0, 1.0, 1.0]" if integer is None else bad
    path = write(tmp_path, f"[{table}]\n{head}{key} = {value}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    message = str(raised.value)
    assert message.startswith(f"{path}: {table}.{key}") and "\n" not in message, message


@pytest.mark.parametrize(("toml", "message"), [
    ("[mqtt]\nconnect_timeout = 1e308\n", "mqtt.connect_timeout: Input should be less than or equal to 300"),
    ("[model]\nnum_threads = 100000\n", "model.num_threads: Input should be less than or equal to 8"),
    ("[audio]\nnum_threads = 0\n", "audio.num_threads: Input should be greater than or equal to 1"),
    ("[alarm]\nmin_on_seconds = inf\n", "alarm.min_on_seconds: Input should be a finite number"),
    ("[alarm]\nhold_seconds = 1e400\n", "alarm.hold_seconds: Input should be a finite number"),
    ("[source]\nfps = 1e-9\n", "source.fps: Input should be greater than or equal to 0.1"),
    ("[source]\nstall_seconds = 1e308\n", "source.stall_seconds: Input should be less than or equal to 300"),
    ('[source]\ntype = "rtsp"\nurl = "rtsp://cam/live"\nfps = nan\n', "source.fps: Input should be a finite number"),
    ("[source]\nreopen_min_seconds = 60\nreopen_max_seconds = 10\n",
     "source: reopen_min_seconds must not be above reopen_max_seconds"),
    ("[mqtt]\nreconnect_min_seconds = 60\nreconnect_max_seconds = 10\n",
     "mqtt: reconnect_min_seconds must not be above reconnect_max_seconds"),
])
def test_the_values_that_crashed_or_silently_disabled_alerting_are_one_line_and_exit_code_3(tmp_path, capsys, toml, message):
    path = write(tmp_path, toml)
    assert main(["config", "check", str(path)]) == 3
    assert capsys.readouterr().err == f"cryedge: {path}: {message}\n"


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("discovery_prefix", "home/#", "must not contain + or #"),
    ("topic_prefix", "cryedge/+/nursery", "must not contain + or #"),
    ("topic_prefix", "cryedge/nursery/", "must not start or end with /"),
    ("discovery_prefix", "/homeassistant", "must not start or end with /"),
    ("topic_prefix", "cry\\u0000edge", "holds a NUL character"),
    ("topic_prefix", "$SYS/cryedge", "must not start with $"),
    ("discovery_prefix", "", "must not be empty"),
    ("topic_prefix", "é" * 40000, "is 80000 bytes of UTF-8"),
])
def test_topic_prefixes_must_be_plain_mqtt_topic_names(tmp_path, key, value, problem):
    path = write(tmp_path, f'[mqtt]\nhost = "b"\n{key} = "{value}"\n')
    with pytest.raises(ConfigError, match=rf"^{path}: mqtt.{key}: .*{re.escape(problem)}"):
        load_config(path, environ={})


def test_a_topic_prefix_with_levels_and_unicode_is_fine(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "b"\ntopic_prefix = "home/kinderzimmer/Überwachung"\n'
                           'discovery_prefix = "ha"\n')
    assert load_config(path, environ={}).mqtt.topic_prefix == "home/kinderzimmer/Überwachung"


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize(("toml", "expected"), [
    ('type = "picamera2"\ncamera = 1\nstream = "lores"\nwidth = 320\nheight = 240\n',
     {"type": "picamera2", "camera": 1, "stream": "lores", "width": 320, "height": 240}),
    ('type = "v4l2"\ndevice = "/dev/video2"\nfps = 15\n', {"type": "v4l2", "device": "/dev/video2", "fps": 15}),
    ('type = "rtsp"\nurl = "rtsp://cam.lan:554/live"\ntransport = "udp"\nusername = "viewer"\n',
     {"type": "rtsp", "url": "rtsp://cam.lan:554/live", "transport": "udp", "username": "viewer"}),
    ('type = "http"\nurl = "http://cam.lan/video.mjpg"\nstall_seconds = 10\n',
     {"type": "http", "url": "http://cam.lan/video.mjpg", "stall_seconds": 10}),
    ('type = "file"\npath = "/clips/night.mp4"\nrealtime = false\n',
     {"type": "file", "path": Path("/clips/night.mp4"), "realtime": False}),
])
def test_each_source_type_takes_its_own_options(tmp_path, toml, expected):
    source = load_config(write(tmp_path, f"[source]\n{toml}"), environ={}).source
    assert source.model_dump(include=set(expected)) == expected


@pytest.mark.parametrize(("toml", "message"), [
    ('type = "rtps"\nurl = "rtsp://cam/live"\n',
     "source.type: 'rtps' is not one of picamera2, v4l2, rtsp, http, file, none (did you mean rtsp?)"),
    ('type = "rtsp"\nurl = "rtsp://cam/live"\ntrasport = "udp"\n',
     "source.trasport: not an option of type rtsp (did you mean source.transport?)"),
    ('type = "rtsp"\nurl = "rtsp://cam/live"\nstream = "lores"\n', "source.stream: not an option of type rtsp"),
    ('type = "file"\npath = "a.mp4"\nwidth = 320\n', "source.width: not an option of type file"),
    ('type = "rtsp"\nurl = "http://cam/live"\n', "source.url: must be a rtsp:// or rtsps:// URL"),
    ('type = "rtsp"\n', "source.url: Field required"),
    ('type = "v4l2"\ndevice = "video0"\n', "source.device: must be a device path under /dev/"),
    ('type = "picamera2"\nstream = "raw"\n', "source.stream: Input should be 'main' or 'lores'"),
    ('uri = "rtsp://cam/live"\npicamera2_stream = "lores"\n', "source.picamera2_stream: not an option of type rtsp"),
    ('uri = "rtmp://cam/live"\n', "source: uri rtmp://cam/live: no source type reads rtmp://"),
])
def test_a_wrong_source_option_names_the_key_and_the_type(tmp_path, toml, message):
    path = write(tmp_path, f"[source]\n{toml}")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert str(raised.value).startswith(f"{path}: {message}"), str(raised.value)


def test_picamera2_stream_of_an_old_file_is_read_now(tmp_path):
    """It was validated and then never passed to the camera."""
    config = load_config(write(tmp_path, '[source]\nuri = "picamera2"\npicamera2_stream = "lores"\n'), environ={})
    assert (config.source.type, config.source.stream) == ("picamera2", "lores")


def test_an_old_flat_source_table_as_config_show_printed_it_keeps_loading(tmp_path):
    old = ('[source]\nuri = "rtsp://cam.lan/live"\nfps = 10.0\nwidth = 640\nheight = 480\nrealtime = true\n'
           'picamera2_stream = "main"\nstall_seconds = 7.0\nrtsp_transport = "udp"\nreopen_min_seconds = 1.0\n'
           'reopen_max_seconds = 30.0\n')
    source = load_config(write(tmp_path, old), environ={}).source
    assert (source.type, source.url, source.transport, source.fps, source.stall_seconds) == \
        ("rtsp", "rtsp://cam.lan/live", "udp", 10.0, 7.0)


def test_dash_dash_source_picamera2_lores_is_the_camera_not_a_file(tmp_path):
    config = load_config(None, cli_overrides(source="picamera2:lores"), environ={})
    assert (config.source.type, config.source.stream) == ("picamera2", "lores")


def test_dash_dash_source_replaces_the_camera_and_keeps_the_settings_that_apply(tmp_path):
    path = write(tmp_path, '[source]\ntype = "rtsp"\nurl = "rtsp://cam.lan/live"\ntransport = "udp"\n'
                           'username = "viewer"\nstall_seconds = 12\n')
    config = load_config(path, cli_overrides(source="/dev/video2"), environ={})
    assert config.source.model_dump(include={"type", "device", "stall_seconds"}) == \
        {"type": "v4l2", "device": "/dev/video2", "stall_seconds": 12}
    other = load_config(path, cli_overrides(source="rtsp://other.lan/live"), environ={})
    assert (other.source.url, other.source.transport, other.source.username) == ("rtsp://other.lan/live", "udp", None)


def test_a_typed_source_shows_and_loads_back(tmp_path, capsys):
    path = write(tmp_path, '[source]\ntype = "picamera2"\nstream = "lores"\nfps = 15\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["source"]["type"] == "picamera2" and "uri" not in shown["source"]
    assert Config.model_validate(shown).source == load_config(path, environ={}).source


def test_a_relative_dash_dash_source_file_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "etc"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(write(folder, '[source]\nuri = "picamera2"\n'), cli_overrides(source="clips/a.mp4"), environ={})
    assert config.source.path == tmp_path / "clips" / "a.mp4"


def test_a_camera_password_in_the_url_is_masked_by_config_show_and_check(tmp_path, capsys):
    path = write(tmp_path, '[source]\nuri = "rtsp://viewer:hunter2@cam.lan:554/live"\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    shown = tomllib.loads(out)["source"]
    assert (shown["url"], shown["username"], shown["password"]) == ("rtsp://cam.lan:554/live", "viewer", "********")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "source stream:rtsp://viewer:********@cam.lan:554/live;" in out and "hunter2" not in out
    source = load_config(path, environ={}).source
    assert source.open_url() == "rtsp://viewer:hunter2@cam.lan:554/live" and "hunter2" not in repr(source)


@pytest.mark.parametrize("kind", ["rtsp", "http"])
def test_a_camera_password_in_a_typed_url_is_masked_by_config_show_too(tmp_path, capsys, kind):
    """``type = "rtsp"`` with ``url = "rtsp://viewer:pw@..."`` (the form `config show` itself prints) holds the
    password as a secret, as ``uri = ...`` does: `config show` once printed this URL as it was written."""
    path = write(tmp_path, f'[source]\ntype = "{kind}"\nurl = "{kind}://viewer:hunter2@cam.lan:554/live"\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    shown = tomllib.loads(out)["source"]
    assert (shown["url"], shown["username"], shown["password"]) == (f"{kind}://cam.lan:554/live", "viewer", "********")
    source = load_config(path, environ={}).source
    assert source.open_url() == f"{kind}://viewer:hunter2@cam.lan:554/live" and "hunter2" not in repr(source)
    assert source.display() == f"stream:{kind}://viewer:********@cam.lan:554/live"
    # given twice, the two must agree (no values in the message: one of them is a password)
    twice = write(tmp_path, f'[source]\ntype = "{kind}"\nurl = "{kind}://viewer:hunter2@cam/x"\nusername = "other"\n', "b.toml")
    with pytest.raises(ConfigError, match="source: url and username disagree; give it once") as error:
        load_config(twice, environ={})
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(("uri", "warned"), [
    ("rtsp://viewer:hunter2@cam.lan:554/live", True),
    ("http://viewer:hunter2@cam.lan/stream.mjpg", True),
    ("rtsp://viewer@cam.lan:554/live", False),  # the safe way: the password from the environment or a file
    ("rtsp://cam.lan:554/live", False),
    ("/dev/video0", False),
])
def test_a_camera_password_on_the_command_line_is_warned_about_once_without_showing_it(caplog, uri, warned):
    """``cryedge run --source rtsp://user:pass@...`` puts the password in every local user's ``ps``."""
    config = load_config(None, cli_overrides(source=uri), environ={"CRYEDGE_CAMERA_PASSWORD": "from-env"})
    lines = [record.getMessage() for record in caplog.records if record.name == "edge.config"]
    if warned:
        assert lines == ["--source: the camera password in the URL is visible to every local user (ps, "
                         "/proc/PID/cmdline) and kept in shell history; give the URL without it "
                         "(rtsp://USER@HOST/...) and the password in $CRYEDGE_CAMERA_PASSWORD or [source] password_file"]
    else:
        assert lines == []
    if "viewer@" in uri:
        assert config.source.open_url() == "rtsp://viewer:from-env@cam.lan:554/live"
    assert "hunter2" not in caplog.text


def test_camera_password_sources_in_order_of_precedence(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "camera_password").write_text("from-credentials")
    with_file = write(tmp_path, '[source]\ntype = "rtsp"\nurl = "rtsp://cam/live"\nusername = "v"\n'
                                'password = "in-toml"\npassword_file = "pw"\n', "a.toml")
    without_file = write(tmp_path, '[source]\nuri = "rtsp://v:in-url@cam/live"\n', "b.toml")

    def password(path, environ):
        return load_config(path, environ=environ).source.password.get_secret_value()

    environ = {"CRYEDGE_CAMERA_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert password(with_file, environ) == "from-env"
    assert password(with_file, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-file"
    assert password(without_file, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credentials"
    assert password(without_file, {}) == "in-url"
    # a file source has no password to take: the MQTT one's environment does not leak into it
    assert load_config(None, environ=environ).source.type == "file"


def test_an_unreadable_camera_password_file_names_the_key(tmp_path):
    path = write(tmp_path, '[source]\ntype = "http"\nurl = "http://cam/x"\nusername = "v"\npassword_file = "/nonexistent/pw"\n')
    with pytest.raises(ConfigError, match=r"cryedge.toml: source.password_file: cannot read /nonexistent/pw"):
        load_config(path, environ={})


def test_a_camera_password_without_a_user_is_an_error_and_an_ambient_one_is_left_alone(tmp_path):
    path = write(tmp_path, '[source]\ntype = "rtsp"\nurl = "rtsp://cam/live"\npassword_file = "pw"\n')
    with pytest.raises(ConfigError, match="source: a password needs a username"):
        load_config(path, environ={})
    open_camera = load_config(write(tmp_path, '[source]\nuri = "rtsp://cam/live"\n'),
                              environ={"CRYEDGE_CAMERA_PASSWORD": "for-another-camera"}).source
    assert open_camera.password is None and open_camera.open_url() == "rtsp://cam/live"


@pytest.mark.parametrize(("toml", "message"), [
    ('uri = "picamera2:lores"\npicamera2_stream = "main"\n', "source: uri and picamera2_stream disagree"),
    ('uri = "rtsp://v:one@cam/live"\npassword = "two"\n', "source: uri and password disagree"),
])
def test_the_shorthand_and_an_option_that_disagree_are_an_error_without_the_values(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(write(tmp_path, f"[source]\n{toml}"), environ={})
    assert "one" not in str(raised.value) and "two" not in str(raised.value)


def test_uri_with_the_type_it_names_is_the_same_source_and_another_type_is_one_line(tmp_path):
    """``uri`` and ``type`` both say what kind of source it is: together they read as "source.url: Field
    required" (the uri was ignored once a type was given). Agreeing, they are the uri alone; else one line."""
    alone = load_config(write(tmp_path, '[source]\nuri = "rtsp://v:pw1@cam/live"\n', "a.toml"), environ={}).source
    both = load_config(write(tmp_path, '[source]\nuri = "rtsp://v:pw1@cam/live"\ntype = "rtsp"\n', "b.toml"),
                       environ={}).source
    assert both == alone and both.open_url() == "rtsp://v:pw1@cam/live"
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, '[source]\nuri = "rtsp://v:pw1@cam/live"\ntype = "file"\n', "d.toml"), environ={})
    assert str(raised.value) == (f"{tmp_path / 'd.toml'}: source: uri is a rtsp source but type = 'file': uri and type say the same "
                                 "thing, give one")


@pytest.mark.parametrize("url", ["rtsp://viewer:hunter2@cam.lan:99999/live", "rtsps://viewer:hunter2@cam.lan:abc/live",
                                 "http://cam.lan:0/video.mjpg"])
def test_a_camera_port_that_is_no_port_is_a_config_error(tmp_path, url):
    """It was reopened with back-off for ever (`cannot open stream ...; next try in at most 30 s`)."""
    with pytest.raises(ConfigError, match="source.url: its port must be a number from 1 to 65535") as refused:
        load_config(write(tmp_path, f'[source]\nuri = "{url}"\n'), environ={})
    assert "hunter2" not in str(refused.value)


def test_a_camera_password_in_the_urls_query_never_shows(tmp_path, capsys):
    """Many MJPEG cameras take the password in the query (``?usr=admin&pwd=...``): the log, /stats and
    `config show` printed it whole, since only a URL's user info was masked."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from mqtt import free_port

    url = "http://127.0.0.1:{port}/cgi-bin/CGIStream.cgi?cmd=GetMJStream&usr=admin&pwd=s3cret-Pa55&token=t0ken-77"
    closed, health = free_port(), free_port()
    path = write(tmp_path, f'[source]\ntype = "http"\nurl = "{url.format(port=closed)}"\nstall_seconds = 1\n'
                           f'[health]\nport = {health}\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = tomllib.loads(capsys.readouterr().out)["source"]["url"]
    assert shown == url.format(port=closed).replace("s3cret-Pa55", "********").replace("t0ken-77", "********")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cmd=GetMJStream&usr=admin&pwd=********&token=********" in out and "s3cret" not in out
    assert load_config(path, environ={}).source.open_url() == url.format(port=closed)  # the camera still gets it

    daemon = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/stats", timeout=2) as response:
                    stats = json.loads(response.read())
                if stats["source_reconnects"] >= 1:
                    break
            except OSError:
                pass
            time.sleep(0.3)
    finally:
        daemon.terminate()
        err = daemon.communicate(timeout=30)[1]
    assert stats is not None and "pwd=********" in stats["source"] and "s3cret" not in json.dumps(stats)
    assert "pwd=********" in err and "s3cret" not in err and "t0ken" not in err, err


def test_a_stream_microphones_password_is_a_secret_from_where_a_cameras_comes_and_config_show_masks_it(tmp_path, capsys):
    """[audio.source] type = "stream" with a password (a separate authenticated microphone): it was refused,
    so such a microphone could not be heard at all. Now as a camera's: split out of the URL, or from
    $CRYEDGE_MICROPHONE_PASSWORD, password_file, the systemd credential microphone_password; shown masked."""
    stream = '[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
    path = write(tmp_path, stream + 'url = "rtsp://listener:hunter2@mic.lan:8554/audio"\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    shown = tomllib.loads(out)["audio"]["source"]
    assert (shown["url"], shown["username"], shown["password"]) == ("rtsp://mic.lan:8554/audio", "listener", "********")
    sound = load_config(path, environ={}).audio.source
    assert sound.open_url() == "rtsp://listener:hunter2@mic.lan:8554/audio" and "hunter2" not in repr(sound)
    assert sound.display() == "stream:rtsp://listener:********@mic.lan:8554/audio"

    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "microphone_password").write_text("from-credentials")
    with_file = write(tmp_path, stream + 'url = "http://mic/a.wav"\nusername = "v"\npassword_file = "pw"\n', "a.toml")
    user_only = write(tmp_path, stream + 'url = "http://v@mic/a.wav"\n', "b.toml")

    def password(path, environ):
        return load_config(path, environ=environ).audio.source.password.get_secret_value()

    environ = {"CRYEDGE_MICROPHONE_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert password(with_file, environ) == "from-env"
    assert password(with_file, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-file"
    assert password(user_only, {"CREDENTIALS_DIRECTORY": str(creds)}) == "from-credentials"
    # the camera's password is the camera's: a microphone elsewhere does not get it
    assert load_config(user_only, environ={"CRYEDGE_CAMERA_PASSWORD": "camera"}).audio.source.password is None
    with pytest.raises(ConfigError, match="audio.source: a password needs a username"):
        load_config(write(tmp_path, stream + 'url = "http://mic/a.wav"\npassword = "x"\n', "c.toml"), environ={})


def test_a_password_in_the_audio_source_flag_is_refused_without_showing_it():
    with pytest.raises(ConfigError, match=r"--audio-source: no password in the URL .*CRYEDGE_MICROPHONE_PASSWORD") as error:
        cli_overrides(audio_source="rtsp://listener:hunter2@mic.lan/audio")
    assert "hunter2" not in str(error.value)
    assert cli_overrides(audio_source="rtsp://listener@mic.lan/audio")["audio"]["source"]["url"] == "rtsp://listener@mic.lan/audio"


# ----------------------------------------------------------------------------- an adversarial file


@pytest.mark.parametrize(("text", "key"), [
    ('[mqtt]\nhost = "b"\ntls = { ca_file = "ca\\u0000.pem" }\n', "mqtt.tls.ca_file"),
    ('[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "pw\\u0000"\n', "mqtt.password_file"),
    ('[live]\nenabled = true\ntoken_file = "t\\u0000"\n', "live.token_file"),
    ('[model]\npath = "cry\\u0000.tflite"\n', "model.path"),
    ('[mqtt]\nhost = "b"\npassword = "s3cret\\u0000"\n', "mqtt.password"),
])
def test_a_nul_character_in_a_value_is_one_line_naming_the_key(tmp_path, capsys, text, key):
    """TOML spells NUL "\\u0000": a file, certificate or token path with one raised "ValueError: embedded null
    byte" as a traceback (config check, and run: a restart loop under systemd); a model path passed the check
    and ran into the same at start. Now the config's exit code 3, the key named, the value not."""
    path = write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == [f"cryedge: {path}: {key}: holds a NUL character (\\u0000), which no path, name or "
                                "host can"]
    assert "s3cret" not in err


def test_a_systemd_credential_that_is_not_text_is_a_config_error_not_a_restart_loop(tmp_path, capsys, monkeypatch):
    """$CREDENTIALS_DIRECTORY/mqtt_password (or camera_password) not UTF-8 raised UnicodeDecodeError: exit 1
    with a traceback, which systemd restarts for ever; the config's exit 3 is in RestartPreventExitStatus."""
    mqtt = write(tmp_path, '[mqtt]\nhost = "b"\nusername = "u"\n', "mqtt.toml")
    camera = write(tmp_path, '[source]\ntype = "rtsp"\nurl = "rtsp://cam/live"\nusername = "u"\n', "camera.toml")
    for path, key, name in ((mqtt, "mqtt", "mqtt_password"), (camera, "source", "camera_password")):
        creds = tmp_path / f"creds-{key}"
        creds.mkdir()
        (creds / name).write_bytes(b"\xffs3cret\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        assert main(["config", "check", str(path)]) == 3
        assert capsys.readouterr().err.splitlines() == [
            f"cryedge: {path}: {key}.password: cannot read the systemd credential {creds / name}: not UTF-8 text"]


def test_a_file_nested_too_deeply_to_read_is_one_line(tmp_path, capsys):
    """tomllib reads nested arrays recursively: 100000 of them raised RecursionError, a traceback."""
    path = write(tmp_path, "a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["config", "check", str(path)]) == 3
    assert capsys.readouterr().err.splitlines() == [f"cryedge: {path}: arrays or tables nested too deeply to read"]


def test_a_broker_url_with_an_unclosed_bracket_is_one_line(capsys):
    """urlsplit raised "ValueError: Invalid IPv6 URL" through `cryedge run --broker mqtt://[::1`: a traceback."""
    assert main(["run", "--no-health", "--broker", "mqtt://[::1"]) == 3
    assert capsys.readouterr().err.splitlines()[-1:] == ["cryedge: --broker: Invalid IPv6 URL (mqtt://[user@]host[:port])"]


@pytest.mark.parametrize("key", ["client_id", "username", "password_file"])
def test_an_mqtt_string_longer_than_mqtt_can_carry_is_a_config_error(tmp_path, capsys, key):
    """MQTT gives a client id, user name and password 2 bytes of length: 70000 characters passed config check,
    then paho raised struct.error at connect, a traceback with exit 1 that systemd restarted for ever."""
    (tmp_path / "pw").write_text("s" * 70_000 + "\n")
    value = '"pw"' if key == "password_file" else f'"{"x" * 70_000}"'
    path = write(tmp_path, f'[mqtt]\nhost = "broker"\nusername = "u"\n{key} = {value}\n' if key != "username"
                 else f'[mqtt]\nhost = "broker"\n{key} = {value}\n')
    assert main(["config", "check", str(path)]) == 3
    shown = "password" if key == "password_file" else key
    assert capsys.readouterr().err.splitlines() == [
        f"cryedge: {path}: mqtt.{shown}: is 70000 bytes of UTF-8; MQTT allows at most 65535"]


def test_a_file_with_a_byte_order_mark_reads(tmp_path, capsys):
    """Notepad saves "UTF-8" with a byte order mark: config check said "TOML syntax error: Invalid statement
    (at line 1, column 1)" of a file that looks right."""
    path = tmp_path / "cryedge.toml"
    path.write_bytes(b'\xef\xbb\xbf[mqtt]\r\nhost = "broker"\r\n')
    assert main(["config", "check", str(path)]) == 0
    assert "mqtt broker:1883" in capsys.readouterr().out


def test_config_show_of_a_control_character_reads_back(tmp_path, capsys):
    """TOML escapes "\\u0001" in a string; config show wrote the character itself, which no TOML reader takes
    ("Illegal character"): the shown configuration, saved as a file, did not load."""
    path = write(tmp_path, '[device]\nname = "Nursery\\u0001\\u007f\\tcot"\n')
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = write(tmp_path, capsys.readouterr().out, "shown.toml")
    assert load_config(shown, environ={}).device.name == "Nursery\x01\x7f\tcot"


@pytest.mark.parametrize(("text", "line"), [
    ("mqtt = 5\n", "mqtt: must be a table ([mqtt] or mqtt = { ... }), not an integer"),
    ('source = ["rtsp://cam/live"]\n', "source: must be a table ([source] or source = { ... }), not an array"),
    ('[audio]\nsource = "alsa"\n', "audio.source: must be a table ([audio.source] or source = { ... }), not a string"),
    ("[mqtt]\ntls = true\n", "mqtt.tls: must be a table ([mqtt.tls] or tls = { ... }), not a boolean"),
    ("[landmarks]\nroi = 5\n", "landmarks.roi: must be an array ([...]), not an integer"),
])
def test_a_value_where_a_table_or_array_goes_is_said_in_tomls_words(tmp_path, capsys, text, line):
    """It said "Input should be a valid dictionary or instance of MqttConfig" (or "object to extract fields
    from"): a class name of the code and a word TOML does not use."""
    path = write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 3
    assert capsys.readouterr().err.splitlines() == [f"cryedge: {path}: {line}"]


@pytest.mark.parametrize(("text", "args", "line"), [
    ('[model]\npath = "~pi/models/cry.tflite"\n', [], "{path}: model.path: ~pi/models/cry.tflite: there is no user pi "
                                                      "on this machine for ~ to name"),
    ('[mqtt]\nhost = "b"\nusername = "u"\npassword_file = "~pi/pw"\n', [],
     "{path}: mqtt.password_file: ~pi/pw: there is no user pi on this machine for ~ to name"),
    ("", ["--source", "~pi/clip.mp4"], "--source: ~pi/clip.mp4: there is no user pi on this machine for ~ to name"),
    ("", ["--audio-source", "~pi/cry.wav"], "--audio-source: ~pi/cry.wav: there is no user pi on this machine for ~ to "
                                            "name"),
])
def test_a_tilde_naming_a_user_that_is_not_here_is_a_config_error(tmp_path, capsys, text, args, line):
    """~pi/... (older guides; Raspberry Pi OS has no user pi since Bookworm) raised RuntimeError "Could not determine
    home directory": a traceback with exit 1, which systemd restarted for ever. Now exit 3, the key named."""
    import pwd

    try:
        pwd.getpwnam("pi")
        pytest.skip("this machine has a user pi")
    except KeyError:
        pass
    path = write(tmp_path, text)
    assert main(["run", "--no-health", "--config", str(path), *args]) == 3
    assert capsys.readouterr().err.splitlines()[-1] == f"cryedge: {line.format(path=path)}"


@pytest.mark.parametrize("key", ["[model]\npath", "[audio]\nmodel", "[landmarks]\nface_model", "[landmarks]\npose_model"])
def test_a_model_path_that_is_a_folder_is_said_to_be_one(tmp_path, capsys, key):
    """config check passed it, and the start said "model file not found: FOLDER" (or "landmark model FOLDER is
    missing; run cryedge models fetch"), of a path that is there."""
    (tmp_path / "models").mkdir()
    path = write(tmp_path, f'{key} = "models"\n')
    assert main(["config", "check", str(path)]) == 3
    table, name = key.strip("[").replace("]\n", ".").split(".")
    assert capsys.readouterr().err.splitlines() == [
        f"cryedge: {path}: {table}.{name}: {tmp_path / 'models'} is a directory, not a model file"]


def test_an_outbox_path_that_is_a_folder_is_said_to_be_one(tmp_path, capsys):
    """config check passed it, and the run kept every cry event in memory only (undelivered ones lost with the
    process), with one line saying SQLite's "unable to open database file" of a folder that is there."""
    (tmp_path / "state").mkdir()
    path = write(tmp_path, '[outbox]\npath = "state"\n')
    assert main(["config", "check", str(path)]) == 3
    assert capsys.readouterr().err.splitlines() == [
        f"cryedge: {path}: outbox.path: {tmp_path / 'state'} is a directory; name the file in it, such as "
        f"{tmp_path / 'state' / 'outbox.sqlite3'}"]


MASK_LINE = "the mask `cryedge config show` prints in place of a password; write the real one"


@pytest.mark.parametrize(("text", "line"), [
    ('[mqtt]\nhost = "broker"\nusername = "u"\npassword = "mqtt-pw"\n',
     f"mqtt.password: is ********, {MASK_LINE} (or set password_file)"),
    ('[source]\nuri = "rtsp://viewer:cam-pw@192.168.1.20/live"\n',
     f"source.password: is ********, {MASK_LINE} (or set password_file)"),
    ('[source]\nuri = "http://192.168.1.20/video.cgi?user=admin&pwd=cam-pw"\n', f"source.url: its pwd is ********, {MASK_LINE}"),
    ('[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
     'url = "rtsp://listener:mic-pw@192.168.1.30/audio"\n',
     f"audio.source.password: is ********, {MASK_LINE} (or set password_file)"),
    ('[source]\ntype = "none"\n[audio]\nenabled = true\n[audio.source]\ntype = "stream"\n'
     'url = "http://192.168.1.30/audio?token=mic-pw"\n', f"audio.source.url: its token is ********, {MASK_LINE}"),
])
def test_config_show_saved_as_the_config_is_refused_where_it_holds_the_mask(tmp_path, capsys, monkeypatch, text, line):
    """`config show > cryedge.toml` is a common start: each masked password read back as ******** and went to the
    broker or camera, which refused it (401) with no hint why. Now `config check` names the key, exit 3."""
    for name in ("CRYEDGE_MQTT_PASSWORD", "CRYEDGE_CAMERA_PASSWORD", "CRYEDGE_MICROPHONE_PASSWORD", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    original = write(tmp_path, text)
    assert main(["config", "show", "--config", str(original)]) == 0
    shown = write(tmp_path, capsys.readouterr().out, "shown.toml")
    assert "-pw" not in shown.read_text()
    assert main(["config", "check", str(shown)]) == 3
    assert capsys.readouterr().err.splitlines() == [f"cryedge: {shown}: {line}"]


def test_a_masked_password_the_service_does_not_use_is_no_error(tmp_path):
    """Where systemd's credential gives the password, the mask in a saved `config show` is not sent: it still loads."""
    (tmp_path / "mqtt_password").write_text("real-pw\n")
    path = write(tmp_path, '[mqtt]\nhost = "broker"\nusername = "u"\npassword = "********"\n')
    config = load_config(path, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.mqtt.password.get_secret_value() == "real-pw"


@pytest.mark.parametrize(("value", "kind"), [('["x"]', "an array"), ("{ path = \"x\" }", "a table"), ("true", "a boolean"),
                                             ("5.0", "a float")])
def test_a_source_uri_that_is_no_string_nor_camera_index_is_a_config_error(tmp_path, capsys, value, kind):
    """uri = ["x"] ran a video file named "['x']" (uri = true one named True): missing, reopened for ever."""
    path = write(tmp_path, f"[source]\nuri = {value}\n")
    assert main(["config", "check", str(path)]) == 3
    assert capsys.readouterr().err.splitlines() == [
        f'cryedge: {path}: source: uri must be a string ("/dev/video0", "rtsp://...", a file) or a camera index, '
        f"not {kind}"]


def test_an_integer_source_uri_is_a_camera_index_as_the_string_is(tmp_path):
    """The README's shorthand "0" (a camera index), written as a TOML integer, means the same camera."""
    assert load_config(write(tmp_path, "[source]\nuri = 5\n"), environ={}).source.device == 5
    assert load_config(write(tmp_path, '[source]\nuri = "5"\n'), environ={}).source.device == 5
    with pytest.raises(ConfigError, match=r"source\.device: a camera index is 0 to 63$"):
        load_config(write(tmp_path, "[source]\nuri = -1\n"), environ={})  # not a video file named -1


@pytest.mark.parametrize("host, why", [
    ("mqtt://cryedge:Sup3r-secret@broker.lan:1883", "a host name or address, not a URL: the user goes in username, "
                                                    "the password in password_file (or $CRYEDGE_MQTT_PASSWORD)"),
    ("cryedge:Sup3r-secret@broker.lan", "a host name or address, not a URL: the user goes in username, the password "
                                        "in password_file (or $CRYEDGE_MQTT_PASSWORD)"),
    ("broker.lan:1884", "a host name or address without a port: give the port as port = N"),
])
def test_a_broker_host_that_is_a_url_or_holds_a_password_is_refused_without_showing_it(tmp_path, capsys, host, why):
    """[mqtt] host took anything: 'config check' said ok, 'config show' printed the password, and 'cryedge run' put
    it in every line about the broker ('mqtt cryedge:Sup3r-secret@broker.lan:1883 unreachable ...') while retrying
    a name that never resolves."""
    path = write(tmp_path, f'[mqtt]\nhost = "{host}"\n')
    for command in (["config", "check", str(path)], ["config", "show", "--config", str(path)]):
        assert main(command) == 3
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", f"cryedge: {path}: mqtt.host: {why}\n")
    assert load_config(None, {"mqtt": {"host": "fd00::17"}}).mqtt.host == "fd00::17"  # an IPv6 address is a host
