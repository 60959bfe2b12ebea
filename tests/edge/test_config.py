"""The configuration file as a user meets it: defaults, errors that say where, secrets kept secret."""

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
    assert config.source.uri == str(paths.data_file("demo.mp4"))
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
    assert config.source.uri == "picamera2" and not config.mqtt.enabled
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
    assert config.source.uri == str(tmp_path / "clips" / "a.mp4")
    assert config.outbox.path == Path.home() / "outbox.sqlite3"


@pytest.mark.parametrize("uri", ["picamera2", "0", "/dev/video0", "rtsp://cam.lan/stream"])
def test_cameras_and_urls_are_left_as_given(tmp_path, uri):
    assert load_config(write(tmp_path, f'[source]\nuri = "{uri}"\n'), environ={}).source.uri == uri


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
    assert config.source.uri == "/dev/video2" and config.mqtt.tls is None
    secure = load_config(None, cli_overrides(broker="mqtts://broker.lan"), environ={})
    assert secure.mqtt.tls is not None and secure.mqtt.effective_port == 8883


@pytest.mark.parametrize("url, problem", [
    ("mqtt://cry:hunter2@broker.lan", "no password in the URL"),
    ("http://broker.lan", "scheme must be"),
    ("mqtt://broker.lan:99999", "port must be a number"),
])
def test_bad_broker_urls_are_refused(url, problem):
    with pytest.raises(ConfigError, match=problem) as raised:
        cli_overrides(broker=url)
    assert "hunter2" not in str(raised.value)


def test_config_show_without_a_file_prints_the_defaults(capsys):
    assert main(["config", "show"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["source"]["uri"] == str(paths.data_file("demo.mp4"))
    assert "host" in shown["mqtt"] and shown["mqtt"]["host"] == ""


def test_missing_tls_files_are_config_errors(tmp_path):
    path = write(tmp_path, '[mqtt]\nhost = "b"\n[mqtt.tls]\nca_file = "ca.crt"\n')
    with pytest.raises(ConfigError, match=rf"cryedge.toml: mqtt.tls.ca_file: cannot read {tmp_path}/ca.crt"):
        load_config(path, environ={})
    (tmp_path / "ca.crt").write_text("")
    assert load_config(path, environ={}).mqtt.tls.ca_file == tmp_path / "ca.crt"
