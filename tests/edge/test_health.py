"""The health endpoints answer real HTTP requests as a monitor or Prometheus reads them."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from edge.errors import ConfigError
from edge.health import HealthServer, HealthStats, start_health_server


class Clock:
    def __init__(self, t: float = 5000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Daemon:
    """Holds the snapshot the way the daemon does: the frame loop swaps in a new frozen record."""

    def __init__(self, stats: HealthStats):
        self._lock = threading.Lock()
        self._stats = stats

    def update(self, **changes) -> None:
        with self._lock:
            self._stats = replace(self._stats, **changes)

    def health_stats(self) -> HealthStats:
        with self._lock:
            return self._stats


RUNNING = HealthStats(
    started=4000.0,
    last_frame=4999.5,
    state="running",
    frames=14_800,
    fps=14.8,
    stage_ms={"source": 1.2, "landmarks": 24.5, "features": 0.3, "model": 0.05, "alarm": 0.01},
    inference_ms=0.05,
    face_share=0.9,
    source="picamera2",
    source_reconnects=2,
    outbox_depth=3,
    broker_connected=False,
    crying=True,
    probability=0.87,
    last_event={"event": "start", "id": "e1", "time": "2026-11-23T09:00:00+00:00"},
    last_event_unix=1795424400.0,
    model="cry-default.tflite",
)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def daemon():
    return Daemon(RUNNING)


@pytest.fixture
def server(daemon, clock):
    with HealthServer(daemon.health_stats, host="127.0.0.1", port=0, stale_after=5.0, clock=clock) as server:
        yield server


def get(server: HealthServer, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_health_is_200_while_frames_flow_and_503_once_they_stop(server, daemon, clock):
    status, content_type, body = get(server, "/health")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "status": "ok",
        "state": "running",
        "uptime_s": 1000.0,
        "last_frame_age_s": 0.5,
    }

    clock.t = 5006.0  # the last frame is now 6.5 s old, stale_after is 5 s
    status, _, body = get(server, "/health")
    assert status == 503
    assert json.loads(body)["status"] == "stalled"
    assert json.loads(body)["last_frame_age_s"] == 6.5

    daemon.update(last_frame=5005.9, state="running")  # the source came back
    assert get(server, "/health")[0] == 200


def test_health_is_503_before_the_first_frame(server, daemon):
    daemon.update(last_frame=None, state="starting", frames=0)
    status, _, body = get(server, "/health")
    assert status == 503
    assert json.loads(body) == {
        "status": "starting",
        "state": "starting",
        "uptime_s": 1000.0,
        "last_frame_age_s": None,
    }


def test_stats_carry_what_the_issue_lists(server):
    status, content_type, body = get(server, "/stats")
    assert (status, content_type) == (200, "application/json")
    stats = json.loads(body)
    assert stats["fps"] == 14.8
    assert stats["stage_ms"]["landmarks"] == 24.5
    assert stats["inference_ms"] == 0.05
    assert stats["uptime_s"] == 1000.0
    assert stats["source_reconnects"] == 2
    assert stats["outbox_depth"] == 3
    assert stats["last_event"] == {"event": "start", "id": "e1", "time": "2026-11-23T09:00:00+00:00"}
    assert stats["last_frame_age_s"] == 0.5
    assert "started" not in stats and "last_frame" not in stats  # monotonic values mean nothing outside


# One line of the text exposition format: a comment, or name{labels} value.
SAMPLE = re.compile(
    r'^(cryedge_[a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$'
)


def parse_exposition(text: str) -> dict[str, dict]:
    """A strict reader of the Prometheus text format: HELP and TYPE precede each family's samples."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_text = line[7:].split(" ", 1)
            assert name not in families, f"{name} declared twice"
            current = families[name] = {"help": help_text, "samples": {}}
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert current is families[name] and kind in ("gauge", "counter")
            current["type"] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not an exposition line: {line!r}"
            name, labels, value = match.group(1), match.group(2) or "", match.group(4)
            assert current is families.get(name) and "type" in current, f"{name} sample before its HELP/TYPE"
            current["samples"][labels] = float(value)
    return families


def test_metrics_are_prometheus_text_with_units_in_the_names(server):
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(body.decode())
    assert families["cryedge_up"]["samples"] == {"": 1.0}
    assert families["cryedge_frames_per_second"]["samples"] == {"": 14.8}
    assert families["cryedge_frames_processed_total"]["type"] == "counter"
    assert families["cryedge_frames_processed_total"]["samples"] == {"": 14800.0}
    assert families["cryedge_stage_duration_seconds"]["samples"]['{stage="landmarks"}'] == pytest.approx(
        0.0245
    )
    assert families["cryedge_inference_duration_seconds"]["samples"] == {"": pytest.approx(0.00005)}
    assert families["cryedge_uptime_seconds"]["samples"] == {"": 1000.0}
    assert families["cryedge_source_reconnects_total"]["samples"] == {"": 2.0}
    assert families["cryedge_outbox_events"]["samples"] == {"": 3.0}
    assert families["cryedge_crying"]["samples"] == {"": 1.0}
    assert families["cryedge_state"]["samples"]['{state="running"}'] == 1.0
    assert families["cryedge_state"]["samples"]['{state="stopping"}'] == 0.0
    assert families["cryedge_last_event_timestamp_seconds"]["samples"] == {"": 1795424400.0}
    for name, family in families.items():
        if family["type"] == "counter":
            assert name.endswith("_total")


def test_metrics_leave_out_what_is_not_known_yet(server, daemon):
    daemon.update(
        last_frame=None,
        state="starting",
        inference_ms=None,
        crying=None,
        broker_connected=None,
        last_event_unix=None,
    )
    families = parse_exposition(get(server, "/metrics")[2].decode())
    assert families["cryedge_up"]["samples"] == {"": 0.0}
    for absent in (
        "cryedge_inference_duration_seconds",
        "cryedge_crying",
        "cryedge_broker_connected",
        "cryedge_last_frame_age_seconds",
        "cryedge_last_event_timestamp_seconds",
    ):
        assert absent not in families


def test_unknown_path_is_404(server):
    status, _, body = get(server, "/")
    assert status == 404
    assert json.loads(body)["endpoints"] == ["/health", "/stats", "/metrics"]


def test_a_failing_snapshot_is_a_500_and_the_server_keeps_serving(clock, daemon):
    calls = []

    def snapshot():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broken")
        return daemon.health_stats()

    with HealthServer(snapshot, port=0, clock=clock) as server:
        assert get(server, "/health")[0] == 500
        assert get(server, "/health")[0] == 200


def test_it_listens_on_loopback_only_by_default(daemon):
    with HealthServer(daemon.health_stats, port=0) as server:
        assert server.address[0] == "127.0.0.1"


def test_close_frees_the_port(daemon):
    server = HealthServer(daemon.health_stats, port=0)
    port = server.port
    server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    with socket.socket() as probe:  # the port can be bound again
        probe.bind(("127.0.0.1", port))


def test_off_switch_starts_nothing(daemon):
    assert start_health_server(daemon.health_stats, enabled=False) is None


def test_a_taken_port_is_a_config_error_naming_the_key(daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*\[health\] port"):
            start_health_server(daemon.health_stats, port=port)
