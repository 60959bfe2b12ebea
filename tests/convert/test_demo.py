"""The shipped default model and demo clip (made by ``cryedge demo build``): what the card and truth promise holds."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import pytest

from edge import paths
from edge.card import load_card, read_embedded_card

MODEL = paths.default_model()
DEMO = paths.data_file("demo.mp4")


def test_default_model_card_says_what_it_is():
    card = load_card(MODEL)
    assert card.kind == "landmark-window" and card.features.spec == "openpose-face70"
    assert card.window == 10 and tuple(card.input_shape) == (1, 10, 140)
    assert card.required_parts == ("face",)
    assert card.labels == ("not_crying", "crying") and card.positive_label == "crying"
    assert card.quantization.scheme == "int8"
    assert "SYNTHETIC" in card.description and card.training["demonstration_only"] is True
    held = card.training["held_out"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(held)
    # the card's held-out figures are on the validation faces; the suite's faces played no part
    from convert import demo

    tested = {group.rsplit("-", 1)[0] for group in card.training["test_groups"]}
    assert tested <= set(demo.VALIDATION_PHOTOS) and len(tested) >= 10  # a clip all in the dark has no window to score
    embedded = json.loads(read_embedded_card(MODEL.read_bytes()))
    assert embedded == json.loads(MODEL.with_suffix(".json").read_text())
    text = MODEL.with_suffix(".md").read_text()
    assert "DEMONSTRATION" in text and "SYNTHETIC" in text and f"{held['f1']:.3f}" in text


def test_default_model_runs_without_tensorflow():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf_keras'): raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from edge.model import TFLiteModel\n"
        f"m = TFLiteModel({str(MODEL)!r})\n"
        "p = m.probabilities(np.full((10, 140), 0.5, np.float32))\n"
        "assert m.runtime.name == 'ai_edge_litert' and 'tensorflow' not in sys.modules\n"
        "print(round(float(p.sum()), 4))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1.0"


def test_demo_clip_matches_its_truth():
    truth = json.loads(DEMO.with_suffix(".json").read_text())
    assert truth["synthetic"] is True and "grace_hopper" in truth["source_photo"]
    capture = cv2.VideoCapture(str(DEMO))
    assert capture.isOpened()
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(truth["fps"])
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (truth["height"], truth["width"], 3)
        frames += 1
    capture.release()
    assert frames == truth["frames"]
    (crying,) = truth["crying"]
    assert 0 < crying["start_s"] < crying["end_s"] < truth["duration_s"]
    assert [s["label"] for s in truth["segments"]].count("crying") == 1
    assert DEMO.stat().st_size < 3_000_000


@pytest.mark.slow
def test_default_model_finds_the_one_cry_in_the_demo_clip():
    """The device's path (landmarks, features, window, int8 model, default alarm) on the clip: one episode, on time."""
    from convert.demo import alarm_events, score_clip

    truth = json.loads(DEMO.with_suffix(".json").read_text())["crying"][0]
    result = score_clip(MODEL, DEMO)
    assert result.face_share == 1.0
    events = alarm_events(result)
    assert [e["kind"] for e in events] == ["start", "end"] and events[1]["reason"] == "scores"
    assert abs(events[0]["t"] - truth["start_s"]) <= 1.5
    assert abs(events[1]["t"] - truth["end_s"]) <= 1.5


@pytest.mark.slow
def test_demo_build_scores_a_clip_as_the_daemon_does_even_in_the_dark(tmp_path):
    """``demo.score_clip`` was a second copy of the pipeline that skipped the daemon's exposure stage: on a dark
    clip its scores differed from what the device computes. It is now the daemon's pipeline (via ``cryedge eval``)."""
    import numpy as np

    from convert.demo import score_clip
    from edge.config import load_config
    from edge.daemon import build_pipeline
    from edge.model import TFLiteModel
    from edge.source import FileSource

    dark = tmp_path / "dark.mp4"
    capture = cv2.VideoCapture(str(DEMO))
    writer = cv2.VideoWriter(str(dark), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (640, 480))
    for _ in range(60):  # 4 s, grey at a fifth of the light: the exposure stage lifts it before MediaPipe
        ok, frame = capture.read()
        assert ok
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) // 5
        writer.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    writer.release()
    capture.release()

    config = load_config(None, {"model": {"path": str(MODEL)}, "audio": {"enabled": False}})
    device = []
    with TFLiteModel(MODEL) as model:
        pipeline = build_pipeline(config, model, wall_clock=lambda t: t)
        source = FileSource(dark, realtime=False)
        source.open()
        try:
            while (frame := source.read()) is not None:
                result = pipeline.process(frame)
                if result.score is not None:
                    device.append(result.score.probability)
        finally:
            source.close()
            pipeline.close()

    scored = score_clip(MODEL, dark)
    assert len(device) == 51
    # Not bit for bit: MediaPipe's landmarks differ between two runs of one clip by up to ~4e-4, now and then
    # across one of the int8 input's 1/255 steps; four runs of the daemon's own pipeline here gave scores up
    # to 0.012 apart with the default model. Without the exposure stage the scores differ by 0.07.
    np.testing.assert_allclose(scored.trace["p"], device, atol=0.025)


def test_a_rebuilt_demo_clip_gets_its_sound_track_back(tmp_path):
    """``cryedge demo build`` writes the clip anew without sound; ``add_demo_sound`` (which it now calls, as
    ``demo-audio build`` does) muxes the SYNTHETIC sound track in and notes it in the truth JSON."""
    import numpy as np

    from convert import audio_demo

    clip = tmp_path / "demo.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for i in range(270):  # 18 s of small pictures, no sound: what write_demo_clip leaves
        writer.write(np.full((48, 64, 3), i % 256, np.uint8))
    writer.release()
    clip.with_suffix(".json").write_text(json.dumps({"synthetic": True}))

    seconds = audio_demo.add_demo_sound(clip)

    assert seconds == pytest.approx(18.0)
    streams = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0",
                              str(clip)], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(streams) == ["audio", "video"]
    assert json.loads(clip.with_suffix(".json").read_text())["sound"]["synthetic"] is True



def test_a_joined_dataset_that_a_full_disk_cut_short_is_not_left_for_the_next_run(tmp_path):
    """demo build joins its clip sets into data-SPEC.npz, which a rerun with --work-dir reuses when it is there: a full
    disk left it 0 bytes (and said only 'No space left on device'), and every later run stopped at 'cannot read
    dataset'. Now nothing is left under its name, and the error names it."""
    import numpy as np
    from filesystems import Tmpfs

    from convert.demo import save_joined

    def part(path, group):
        np.savez(path, x=np.ones((6, 10, 140), np.float32), y=np.arange(6) % 2, groups=np.array([group] * 6),
                 videos=np.array([f"{group}.mp4"] * 6), t_end=np.arange(6, dtype=np.float32), labels=np.array(["no", "yes"]),
                 spec=np.array("openpose-face70"), normalization=np.array("face-box"), window=np.array(10),
                 stride=np.array(1), fps=np.array(10.0), frames=np.array(15), frames_without_face=np.array(0))
        return path

    parts = [part(tmp_path / "a.npz", "a"), part(tmp_path / "b.npz", "b")]
    with Tmpfs(tmp_path / "work", size="64k") as disk:
        disk.fill()
        joined = disk.path / "data-openpose-face70.npz"
        with pytest.raises(OSError) as raised:
            save_joined(parts, joined)
        assert (raised.value.strerror, raised.value.filename) == ("No space left on device", str(joined))
        assert sorted(p.name for p in disk.path.iterdir()) == ["filler"]
