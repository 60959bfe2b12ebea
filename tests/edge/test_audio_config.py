"""The [audio] and [fusion] sections: off by default, sources as a typed union, errors that name the key."""

from __future__ import annotations

import subprocess

import pytest

from edge.audio import hearing_enabled
from edge.config import AlsaSoundConfig, FileSoundConfig, load_config, to_toml
from edge.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "cryedge.toml"
    path.write_text(text)
    return path


def test_without_an_audio_section_the_daemon_listens_only_to_a_video_file_with_a_sound_track(tmp_path):
    config = load_config()
    assert config.audio.enabled == "auto"
    assert config.audio.source.type == "video" and config.fusion.mode == "either"
    camera = load_config(overrides={"source": {"uri": "/dev/video0"}})
    assert hearing_enabled(camera) is False  # a camera gives no sound: no microphone configured, none used
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5:duration=1",
                    str(silent)], check=True)
    assert hearing_enabled(load_config(overrides={"source": {"uri": str(silent)}})) is False
    voiced = tmp_path / "voiced.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:v", "copy", "-shortest", str(voiced)], check=True)
    model = write(tmp_path, "")  # any file stands for the model here
    with_sound = load_config(overrides={"source": {"uri": str(voiced)}, "audio": {"model": str(model)}})
    assert hearing_enabled(with_sound) is True
    assert hearing_enabled(load_config(overrides={"source": {"uri": str(voiced)}, "audio": {
        "model": str(tmp_path / "none.tflite")}})) is False  # no audio model: vision alone, as before
    assert hearing_enabled(load_config(overrides={"audio": {"enabled": False, "model": str(model)},
                                                  "source": {"uri": str(voiced)}})) is False


def test_a_microphone_by_card_index_or_name(tmp_path):
    config = load_config(write(tmp_path, '[audio]\nenabled = true\n[audio.source]\ntype = "alsa"\ndevice = 1\n'))
    assert isinstance(config.audio.source, AlsaSoundConfig) and config.audio.source.device == 1
    config = load_config(write(tmp_path, '[audio.source]\ntype = "alsa"\ndevice = "plughw:CARD=Mic,DEV=0"\n'))
    assert config.audio.source.device == "plughw:CARD=Mic,DEV=0"


def test_a_sound_file_is_relative_to_the_config_file(tmp_path):
    config = load_config(write(tmp_path, '[audio.source]\ntype = "file"\npath = "night.wav"\n[audio]\nmodel = "m.tflite"\n'))
    assert isinstance(config.audio.source, FileSoundConfig)
    assert config.audio.source.path == tmp_path / "night.wav" and config.audio.model == tmp_path / "m.tflite"


@pytest.mark.parametrize("text, message", [
    ('[audio.source]\ntype = "pulse"\n', r"audio.source.type: 'pulse' is not one of video, alsa, file, stream"),
    ('[audio.source]\ntype = "alsa"\npath = "x"\n', r"audio.source.path: not an option of type alsa"),
    ('[audio.source]\ntype = "stream"\nurl = "ftp://cam/a"\n', r"audio.source.url: String should match"),
    # a stream microphone with no host or a port that is none: reopened with back-off for ever, as the camera was
    ('[audio.source]\ntype = "stream"\nurl = "rtsp://"\n', r"audio.source.url: has no host name"),
    ('[audio.source]\ntype = "stream"\nurl = "http://:80/mic.wav"\n', r"audio.source.url: has no host name"),
    ('[audio.source]\ntype = "stream"\nurl = "https://mic.lan:99999/a"\n', r"audio.source.url: its port must be a number from 1"),
    ('[fusion]\nmode = "loudest"\n', r"fusion.mode: Input should be 'either', 'mean', 'vision' or 'audio'"),
    ('[fusion]\naudio_weight = 1.5\n', r"fusion.audio_weight: Input should be less than or equal to 1"),
    ('[fusion]\naudio_min_on_seconds = -0.5\n', r"fusion.audio_min_on_seconds: Input should be greater than or equal to 0"),
    ('[fusion]\naudio_min_on_seconds = "soon"\n', r"fusion.audio_min_on_seconds: Input should be a valid number"),
])
def test_a_bad_audio_setting_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_config_show_prints_the_audio_sections(tmp_path):
    shown = to_toml(load_config(write(tmp_path, '[audio.source]\ntype = "alsa"\ndevice = "default"\n')))
    assert '[audio.source]\n' in shown and 'type = "alsa"' in shown and '[fusion]\nmode = "either"' in shown


@pytest.mark.parametrize("url", ['ftp://me:secret@cam/a"', 'rtsp://me:secret@cam:99999/a"', 'rtsp://me:secret@/a"',
                                 'rtsp://me:secret@cam/a"\nusername = "other"'])
def test_a_refused_stream_url_does_not_echo_its_password(tmp_path, url):
    """A password in a stream microphone's URL is split off as a secret (test_config); a URL refused for
    another reason (its scheme, port or host, a username that disagrees) is named without it."""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, f'[audio.source]\ntype = "stream"\nurl = "{url}\n'), environ={})
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("model, message", [
    ("/nonexistent/yamnet.tflite", r"\[audio\] model file not found: /nonexistent/yamnet.tflite"),
    ("VISION", r"\[audio\] model cry-default.tflite is a landmark-window model, not an audio one"),
])
def test_a_missing_or_wrong_audio_model_is_one_line_saying_so(model, message):
    from edge import paths
    from edge.audio import open_hearing
    from edge.errors import ModelError

    model = str(paths.default_model()) if model == "VISION" else model
    with pytest.raises(ModelError, match=message):
        open_hearing(load_config(overrides={"audio": {"enabled": True, "model": model}}), 0.5)


@pytest.mark.parametrize("command", ["run", "eval"])
def test_the_audio_model_given_where_a_vision_model_goes_is_one_line_and_the_model_exit_code(tmp_path, command):
    """``[model] path`` (or ``cryedge eval --model``) naming the bundled audio model, an easy mix-up: it was an
    AttributeError traceback, exit code 1, which systemd restarts for ever; a model error (4) is not restarted."""
    import subprocess
    import sys

    from edge import paths

    audio = paths.bundled("models", "cry-audio-default.tflite")
    config = write(tmp_path, f'[model]\npath = "{audio}"\n[health]\nenabled = false\n')
    (tmp_path / "labels.csv").write_text("video,start_s,end_s,label\ndemo.mp4,5,14,crying\n")
    args = (["run", "--config", str(config), "--fast"] if command == "run" else
            ["eval", str(paths.data_file("demo.mp4")), "--labels", str(tmp_path / "labels.csv"), "--model", str(audio),
             "--output-dir", str(tmp_path / "out")])
    done = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 4 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("cryedge: model cry-audio-default.tflite is an audio-window model, for [audio] model "
                    "(cryedge eval --audio-model); [model] path takes a vision model (landmark-window or face-crop)")
