"""Audio capture: the audio track of real files through ffmpeg, and ALSA capture through arecord.

This machine has no sound card and no snd-aloop module, so ALSA capture is tested against a stand-in
(``audio_models.alsa_stand_in``): ALSA's own ``file`` PCM reading a raw 48 kHz stereo file behind a
``plug``. It is not paced in real time as a microphone is.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from itertools import pairwise

import numpy as np
import pytest
from audio_models import alsa_stand_in, tone, write_wav

from edge.audio_source import AlsaAudioSource, FfmpegAudioSource, alsa_device_name, level_dbfs
from edge.errors import SourceError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt install ffmpeg)")
needs_arecord = pytest.mark.skipif(shutil.which("arecord") is None, reason="needs arecord (apt install alsa-utils)")


def read_all(source, limit: float = 30.0) -> list:
    chunks, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = source.read(timeout=1.0)
        if chunk is not None:
            chunks.append(chunk)
        elif source.finished:
            break
    return chunks


class Counting:
    """Stands in for the audio pipeline: keeps what it is given (the monitor's own logic is under test)."""

    def __init__(self):
        self.samples = []
        self.scorer = type("S", (), {"spec": type("A", (), {"hop_seconds": 0.5})()})()

    def process(self, chunk):
        self.samples.append(chunk.samples)
        return []

    def reset(self):
        pass


def dominant_hz(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / samples.size)


@needs_ffmpeg
def test_a_files_audio_track_arrives_as_16khz_mono_on_the_files_timeline(tmp_path):
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=3", "-ac", "2",
                    "-c:v", "libx264", "-c:a", "aac", "-shortest", str(clip)], check=True)
    source = FfmpegAudioSource(clip, realtime=False)
    source.open()
    try:
        chunks = read_all(source)
    finally:
        source.close()
    samples = np.concatenate([c.samples for c in chunks])
    assert abs(samples.size - 3 * 16000) < 0.05 * 16000
    assert all(c.rate == 16000 for c in chunks)
    assert abs(dominant_hz(samples[:16000]) - 440) <= 2
    # consecutive chunks are consecutive on the file's timeline, whatever the decoding speed
    assert all(abs(b.t - (a.t + a.duration)) < 1e-6 for a, b in pairwise(chunks))
    assert source.overruns == 0


@needs_ffmpeg
def test_a_file_played_in_real_time_takes_its_duration(tmp_path):
    wav = write_wav(tmp_path / "a.wav", tone(1.5, 300.0))
    source = FfmpegAudioSource(wav, realtime=True)
    start = time.monotonic()
    source.open()
    try:
        chunks = read_all(source)
    finally:
        source.close()
    assert time.monotonic() - start >= 1.3
    assert sum(c.samples.size for c in chunks) == 24000


@needs_ffmpeg
def test_a_video_without_a_sound_track_is_a_clear_error(tmp_path):
    clip = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=1",
                    "-c:v", "libx264", str(clip)], check=True)
    source = FfmpegAudioSource(clip, realtime=False)
    source.open()
    try:
        with pytest.raises(SourceError, match="file:silent.mp4: it has no sound track"):
            read_all(source)
    finally:
        source.close()


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="audio file not found"):
        FfmpegAudioSource(tmp_path / "nope.wav").open()


def test_card_indices_mean_plughw():
    assert alsa_device_name(1) == "plughw:1,0"
    assert alsa_device_name("2") == "plughw:2,0"
    assert alsa_device_name("plughw:CARD=Device,DEV=0") == "plughw:CARD=Device,DEV=0"


def test_level_in_dbfs():
    assert level_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert level_dbfs(tone(1.0, 1000.0, level=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert level_dbfs(tone(1.0, 1000.0, level=0.1)) == pytest.approx(-23.01, abs=0.01)
    assert level_dbfs(np.zeros(100, np.float32)) == -120.0


@needs_arecord
def test_alsa_capture_converts_48khz_stereo_to_16khz_mono(tmp_path, monkeypatch):
    alsa_stand_in(tmp_path, monkeypatch, seconds=3.0, hz=440.0)
    source = AlsaAudioSource("mic", buffer_seconds=10.0)
    source.open()
    try:
        chunks = []
        while sum(c.samples.size for c in chunks) < 32000:
            chunk = source.read(timeout=2.0)
            assert chunk is not None
            chunks.append(chunk)
    finally:
        source.close()
    samples = np.concatenate([c.samples for c in chunks])
    assert abs(dominant_hz(samples[:16000]) - 440) <= 2
    assert level_dbfs(samples[:16000]) == pytest.approx(20 * np.log10(0.25 / np.sqrt(2)), abs=0.5)


@needs_arecord
def test_a_pipeline_that_falls_behind_loses_the_oldest_sound_and_counts_it(tmp_path, monkeypatch):
    alsa_stand_in(tmp_path, monkeypatch, seconds=5.0)
    source = AlsaAudioSource("mic", buffer_seconds=0.5)  # 5 blocks of 100 ms
    source.open()
    try:
        deadline = time.monotonic() + 10
        while source.overruns == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # not reading: the stand-in delivers faster than real time
        first = source.read(timeout=1.0)
    finally:
        source.close()
    assert source.overruns > 0
    assert first.index > 0  # the oldest blocks were the ones dropped


@needs_arecord
def test_a_device_that_is_not_there_is_a_source_error_naming_it(tmp_path, monkeypatch):
    alsa_stand_in(tmp_path, monkeypatch)
    source = AlsaAudioSource("nosuchmic")
    source.open()
    try:
        with pytest.raises(SourceError, match=r"alsa:nosuchmic: cannot open the capture device: No such file or directory \(arecord -L"):
            read_all(source, limit=5)
    finally:
        source.close()


@needs_ffmpeg
@pytest.mark.skipif(shutil.which("rtsp-server-perl") is None, reason="needs rtsp-server-perl")
def test_a_cameras_rtsp_sound_track_is_heard_and_reconnected_after_a_reboot(tmp_path):
    """A real RTSP camera on loopback (tests/streams.py) sending H.264 and AAC; it reboots mid-stream."""
    from streams import RtspCamera

    from edge.audio import AudioMonitor

    clip = tmp_path / "cam.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=4",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=4", "-c:v", "libx264",
                    "-c:a", "aac", "-shortest", str(clip)], check=True)

    with RtspCamera(clip, tmp_path, sound=True) as camera:
        sink = Counting()
        monitor = AudioMonitor(lambda: FfmpegAudioSource(camera.url, 16000, rtsp_transport="udp", timeout_seconds=3),
                               sink, stall_seconds=3, backoff_first=0.5, backoff_limit=1.0)
        monitor.start()
        try:
            deadline = time.monotonic() + 20
            while sum(len(s) for s in sink.samples) < 32000 and time.monotonic() < deadline:
                time.sleep(0.1)
            heard = np.concatenate(sink.samples)
            assert heard.size >= 32000 and abs(dominant_hz(heard[-16000:]) - 440) <= 3
            assert monitor.status.name == f"stream:{camera.url}"
            camera.stop()  # the camera reboots
            deadline = time.monotonic() + 20
            while monitor.status.state != "reopening" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert monitor.status.state == "reopening" and monitor.reason == "no_sound_device"
            camera.start()
            before = sum(len(s) for s in sink.samples)
            deadline = time.monotonic() + 30
            while sum(len(s) for s in sink.samples) < before + 16000 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sum(len(s) for s in sink.samples) >= before + 16000
            assert monitor.status.reconnects >= 1
        finally:
            monitor.close()


@needs_ffmpeg
@pytest.mark.skipif(shutil.which("rtsp-server-perl") is None, reason="needs rtsp-server-perl")
@pytest.mark.timeout(90)
def test_a_stream_microphones_password_is_in_no_command_line_and_its_sound_is_heard(tmp_path, caplog):
    """The stream's URL, password and all, reaches ffmpeg on a pipe (as the camera session's does): before, it
    stood on ffmpeg's command line, which ps and /proc/PID/cmdline show to every local user."""
    import logging

    from streams import RtspCamera, command_lines

    caplog.set_level(logging.DEBUG)
    clip = tmp_path / "mic.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=4",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=4", "-c:v", "libx264",
                    "-c:a", "aac", "-shortest", str(clip)], check=True)
    with RtspCamera(clip, tmp_path, sound=True) as camera:
        url = camera.url.replace("rtsp://", "rtsp://viewer:hunter2@")
        source = FfmpegAudioSource(url, rtsp_transport="udp", timeout_seconds=3.0)
        source.open()
        try:
            chunks, deadline = [], time.monotonic() + 30
            while sum(c.samples.size for c in chunks) < 32000 and time.monotonic() < deadline:
                chunk = source.read(timeout=1.0)
                if chunk is not None:
                    chunks.append(chunk)
            assert not [line for line in command_lines() if "hunter2" in line]
        finally:
            source.close()
    heard = np.concatenate([c.samples for c in chunks])
    assert heard.size >= 32000 and abs(dominant_hz(heard[-16000:]) - 440) <= 3
    assert source.name == f"stream:{camera.url.replace('rtsp://', 'rtsp://viewer:********@')}"
    assert "hunter2" not in caplog.text


@needs_ffmpeg
def test_a_stream_microphones_token_is_masked_in_its_name_and_in_what_ffmpeg_says_when_it_fails(caplog):
    """A token in the URL's query (many cameras take ?user=...&pwd=...): the name, the logs and the error show
    it as mask_url does; before, the name and ffmpeg's error line (which names the URL) showed it whole."""
    import logging

    from mqtt import free_port

    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}/audio.aac?user=admin&pwd=hunter2"  # nothing listens there
    source = FfmpegAudioSource(url, timeout_seconds=2.0)
    source.open()
    try:
        with pytest.raises(SourceError) as failed:
            read_all(source, limit=10)
    finally:
        source.close()
    assert source.name == "stream:http://127.0.0.1:" + url.split(":", 2)[2].replace("hunter2", "********")
    assert "hunter2" not in str(failed.value) and "hunter2" not in caplog.text
    assert "Impossible to open 'http://127.0.0.1:" in caplog.text and "pwd=********'" in caplog.text  # ffmpeg's line


@needs_ffmpeg
@pytest.mark.timeout(60)
def test_a_stream_microphone_that_opens_but_is_refused_is_retried_with_back_off(tmp_path):
    """ffmpeg starts (the open succeeds) and the server refuses it (401, no password given): each retry waits
    longer, 0.5, 1, 2, 4 s. Before, the back-off began afresh at every open, so a refused stream was asked
    again every half second for as long as the daemon ran (an ffmpeg started each time, on a Pi's CPU)."""
    from streams import MjpegServer

    from edge.audio import AudioMonitor

    with MjpegServer([np.zeros((16, 16, 3), np.uint8)], credentials=("viewer", "hunter2")) as server:
        monitor = AudioMonitor(lambda: FfmpegAudioSource(server.url, 16000, timeout_seconds=2), Counting(),
                               stall_seconds=2, backoff_first=0.5, backoff_limit=4.0)
        monitor.start()
        try:
            time.sleep(8.0)
        finally:
            monitor.close()
        assert "401 Unauthorized" in monitor.status.last_error
        # retried at about 0.5, 1.5, 3.5 and 7.5 s (before: every 0.5 s or so, 12 times)
        assert 2 <= monitor.status.reconnects <= 4, monitor.status.reconnects
        assert server.refused >= monitor.status.reconnects
