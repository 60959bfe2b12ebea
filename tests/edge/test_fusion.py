"""Fusion: one score for the alarm from what is seen and what is heard."""

from __future__ import annotations

import pytest

from edge.fusion import Fusion, rescale
from edge.records import Score


def seen(p, status="ok"):
    return Score(t=1.0, probability=p, status=status)


heard = seen


def test_either_mode_lets_neither_modality_hide_the_others_cry():
    fusion = Fusion("either")
    assert fusion.fuse(1.0, seen(0.9), heard(0.05)).score.probability == 0.9
    assert fusion.fuse(1.0, seen(0.05), heard(0.9)).score.probability == 0.9
    assert fusion.fuse(1.0, seen(0.1), heard(0.2)).score.probability == 0.2


def test_with_the_face_hidden_the_sound_alone_decides():
    for mode in ("either", "mean"):
        fused = Fusion(mode).fuse(1.0, seen(0.0, "no_face"), heard(0.8))
        assert fused.score.ok and fused.score.probability == 0.8
        assert fused.vision.status == "no_face" and fused.vision.probability is None


def test_without_sound_the_picture_alone_decides_and_says_why():
    fused = Fusion("either").fuse(1.0, seen(0.7), None, audio_status="no_sound_device")
    assert fused.score.ok and fused.score.probability == 0.7
    assert fused.senses() == {"vision": {"probability": 0.7, "status": "ok"},
                              "audio": {"probability": None, "status": "no_sound_device"}}


def test_when_neither_can_perceive_the_alarm_is_told_why():
    fused = Fusion("either").fuse(1.0, seen(0.0, "no_face"), heard(0.0, "no_sound"))
    assert not fused.score.ok and fused.score.status == "no_face"
    assert Fusion("audio").fuse(1.0, seen(0.9), None, audio_status="no_sound_device").score.status == "no_sound_device"


def test_weighted_mean_and_single_modality_modes():
    assert Fusion("mean", audio_weight=0.25).fuse(1.0, seen(0.8), heard(0.4)).score.probability == pytest.approx(0.7)
    assert Fusion("vision").fuse(1.0, seen(0.1), heard(0.95)).score.probability == 0.1
    assert Fusion("audio").fuse(1.0, seen(0.95), heard(0.1)).score.probability == 0.1
    # the modality not used is still reported
    assert Fusion("vision").fuse(1.0, seen(0.1), heard(0.95), level_dbfs=-20.0).audio.as_dict() == {
        "probability": 0.95, "status": "ok", "level_dbfs": -20.0}


def test_each_models_threshold_lands_on_the_alarms():
    fusion = Fusion("either", alarm_threshold=0.5, audio_threshold=0.3)
    assert fusion.fuse(1.0, None, heard(0.3)).score.probability == pytest.approx(0.5)
    assert fusion.fuse(1.0, None, heard(0.15)).score.probability == pytest.approx(0.25)
    assert fusion.fuse(1.0, None, heard(0.65)).score.probability == pytest.approx(0.75)
    assert rescale(1.0, 0.3, 0.5) == 1.0 and rescale(0.0, 0.3, 0.5) == 0.0


def test_without_a_camera_the_status_says_so():
    fused = Fusion("either").fuse(1.0, None, None, audio_status="no_sound")
    assert fused.score.status == "no_sound" and fused.senses() == {"audio": {"probability": None, "status": "no_sound"}}
    with pytest.raises(ValueError, match="fusion mode"):
        Fusion("loudest")


def test_when_the_sound_says_crying_the_alarm_is_asked_for_the_sounds_debounce():
    fusion = Fusion("either", audio_min_on_seconds=0.25)
    assert fusion.fuse(1.0, seen(0.0, "no_face"), heard(0.8)).score.min_on_seconds == 0.25
    assert fusion.fuse(1.0, seen(0.2), heard(0.8)).score.min_on_seconds == 0.25
    assert fusion.fuse(1.0, seen(0.9), heard(0.8)).score.min_on_seconds == 0.25  # seen and heard: as quick
    assert Fusion("audio", audio_min_on_seconds=0.25).fuse(1.0, None, heard(0.8)).score.min_on_seconds == 0.25
    # only the picture says crying, or both are weighed: the alarm's own debounce
    assert fusion.fuse(1.0, seen(0.9), heard(0.3)).score.min_on_seconds is None
    assert fusion.fuse(1.0, seen(0.0, "no_face"), heard(0.3)).score.min_on_seconds is None
    assert Fusion("mean", audio_min_on_seconds=0.25).fuse(1.0, seen(0.9), heard(0.8)).score.min_on_seconds is None
    assert Fusion("vision", audio_min_on_seconds=0.25).fuse(1.0, seen(0.1), heard(0.8)).score.min_on_seconds is None
    assert Fusion("either").fuse(1.0, seen(0.0, "no_face"), heard(0.8)).score.min_on_seconds is None
