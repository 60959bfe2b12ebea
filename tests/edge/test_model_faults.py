"""A vision model that fails at run time, and scores that are not numbers, in the one alarm.

The model is a real TFLite graph built here (test_daemon's "face on the right" model, with a fault): it gives NaN
scores, or LiteRT's invoke fails, when the face is far to the right. The alarm is fed as the daemon feeds it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from edge.alarm import Alarm
from edge.card import ModelCard
from edge.config import AlarmConfig
from edge.records import Score


def test_scores_that_are_not_numbers_during_a_cry_end_it_as_blind_not_never():
    """NaN is neither above nor below a threshold: fed NaN during a cry, the alarm held the episode ON for as long as
    NaN came (never an OFF with a model that kept failing). It is a model error: the blind rule ends the episode
    after blind_seconds, with that reason, and the smoothed probability stays a number."""
    alarm = Alarm(AlarmConfig(min_on_seconds=0.5, hold_seconds=1.0, blind_seconds=2.0))
    events = []
    for n in range(200):
        t = n / 10
        events += alarm.update(Score(t=t, probability=0.9 if t < 5.0 else math.nan))
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "model_error")], events
    assert events[1].t == pytest.approx(4.9) and math.isfinite(alarm.state.probability)


def faulty_position_model(path, fault: str):
    """sigmoid((mean face x - 320) / 20), as test_daemon.write_position_model, failing when that mean is over 450:
    NaN scores (``fault="nan"``), or a GATHER out of bounds in LiteRT's invoke (``"raise"``)."""
    tf = pytest.importorskip("tensorflow")
    weights = np.zeros((1560,), np.float32)
    for frame in range(10):
        for point in range(70):
            weights[frame * 156 + 2 * point] = 1 / 700

    @tf.function(input_signature=[tf.TensorSpec([1, 10, 156], tf.float32)])
    def model(window):
        x = tf.reduce_sum(tf.reshape(window, [1, 1560]) * weights, axis=1, keepdims=True)  # mean face x
        p = tf.sigmoid((x - 320.0) / 20.0)
        if fault == "nan":
            return p * tf.sqrt(450.0 - x) / tf.sqrt(450.0 - x)
        row = tf.cast(x / 450.0, tf.int32)  # 1 (out of one row) beyond 450
        return p * tf.gather(tf.ones([1, 1]), tf.reshape(row, [1]))[0]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    path.write_bytes(converter.convert())
    card = ModelCard(name=f"position-{fault}", kind="landmark-window", input_shape=(1, 10, 156),
                     labels=("left", "right"), positive_label="right", output="sigmoid", threshold=0.5,
                     features={"spec": "openpose-face70-body8", "normalization": "pixels"})
    path.with_suffix(".json").write_text(card.to_json())
    return path


def face_at(x: float) -> np.ndarray:
    window = np.zeros((10, 156), np.float32)
    window[:, 0:140:2] = x
    return window


@pytest.mark.parametrize("fault", ["nan", "raise"])
def test_a_vision_model_failing_on_a_window_gives_a_model_error_score_said_once(tmp_path, caplog, fault):
    """The frame loop got NaN as the probability (then NaN in the state's JSON, which Home Assistant cannot parse)
    or LiteRT's RuntimeError (a traceback that ended the daemon without the cry's end). Now the window's score
    says model_error with a probability that is a number, in one warning; the next good window is ok again."""
    from edge.model import TFLiteModel, WindowScorer

    scorer = WindowScorer(TFLiteModel(faulty_position_model(tmp_path / f"{fault}.tflite", fault)))
    with caplog.at_level(logging.INFO, logger="edge.model"):
        right = scorer.score(face_at(400.0), 1.0, True)
        failed = [scorer.score(face_at(500.0), 2.0 + n, True) for n in range(5)]
        again = scorer.score(face_at(400.0), 8.0, True)
    assert right.ok and right.probability > 0.9
    assert {(s.status, s.probability) for s in failed} == {("model_error", 0.0)}
    assert again.ok and again.probability > 0.9
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"position-{fault}" in warned[0], warned


@pytest.mark.timeout(240)
def test_with_a_camera_a_vision_model_that_keeps_failing_makes_health_503_and_keeps_the_watchdog_fed(tmp_path):
    """``cryedge run`` under a systemd-like watchdog, its camera a clip (real time) with the face where the model
    fails (LiteRT's invoke raises) for 9 s, then where it answers. Frames kept flowing, so /health said 200 "ok"
    all night while nothing was judged. Now: 503 "model_error" naming the model once it has failed for as long as
    /health waits for a frame (stall_seconds), 200 "ok" when it answers again, and the watchdog pinged throughout
    (a restart cannot mend a model file; a crash loop is worse)."""
    import itertools
    import time

    from test_daemon import write_clip
    from test_notify import Service
    from test_sense_health import health_in_metrics, scrape

    clip = write_clip(tmp_path / "right-then-left.avi", seconds=16.0, truth=(0.0, 9.0))
    model = faulty_position_model(tmp_path / "raise.tflite", "raise")
    service = Service(tmp_path, f'[source]\nuri = "{clip}"\nstall_seconds = 2.0\n[model]\npath = "{model}"',
                      2_000_000)
    answers, metrics = [], []
    try:
        start = time.monotonic()
        while service.process.poll() is None and time.monotonic() - start < 150:  # the clip's end ends the run
            answers.append(service.health())
            if answers[-1][1].get("status") == "model_error" and not metrics:
                metrics.append(scrape(service.health_port))
            time.sleep(0.25)
    finally:
        stderr = service.terminate()
    assert "Traceback" not in stderr, stderr[-3000:]
    failing = [body for code, body in answers if code == 503 and body.get("status") == "model_error"]
    assert failing, [body.get("status") for _, body in answers]
    assert "position-raise" in failing[0]["reason"] and failing[0]["model_error"] == "vision", failing[0]
    statuses = [body.get("status") for code, body in answers if code is not None]
    assert statuses[-1] == "ok" and statuses.index("model_error") < len(statuses) - 1 - statuses[::-1].index("ok")
    gaps = [b - a for a, b in itertools.pairwise(service.pings())]
    assert gaps and max(gaps) < 2.0, gaps
    # /metrics says it too: cryedge_up stayed 1 (frames flowed) with nothing to alert on
    assert metrics and health_in_metrics(metrics[0]) == ("model_error", {"vision": 0.0}), metrics
    assert metrics[0]["cryedge_up"]["samples"] == {"": 1.0}
