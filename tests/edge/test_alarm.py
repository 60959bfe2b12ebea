"""The alarm as a specification: scripted score sequences in, cry episodes out."""

import itertools
import random

import pytest

from edge.alarm import Alarm, Smoother
from edge.config import AlarmConfig
from edge.records import Score

FPS = 10
WALL_EPOCH = 1_800_000_000.0


def make_alarm(**settings) -> Alarm:
    defaults = dict(
        smoothing="median",
        median_window=3,
        on_threshold=0.6,
        off_threshold=0.4,
        min_on_seconds=1.0,
        hold_seconds=2.0,
        cooldown_seconds=5.0,
        blind_seconds=3.0,
    )
    counter = itertools.count(1)
    return Alarm(
        AlarmConfig(**(defaults | settings)),
        wall_clock=lambda t: WALL_EPOCH + t,
        new_id=lambda: f"ep{next(counter)}",
    )


def scores(*segments, start=0.0):
    """Scores at FPS from segments of (seconds, probability[, face_seen])."""
    t = start
    for segment in segments:
        seconds, probability = segment[:2]
        face = segment[2] if len(segment) > 2 else True
        for _ in range(round(seconds * FPS)):
            yield Score(t=round(t, 6), probability=probability, face_seen=face)
            t += 1 / FPS


def run(alarm, sequence, finish_at=None):
    events = []
    for score in sequence:
        events += alarm.update(score)
    if finish_at is not None:
        events += alarm.finish(finish_at)
    return events


def test_a_cry_gives_one_start_and_one_end_dated_when_it_happened():
    alarm = make_alarm()
    events = run(alarm, scores((5, 0.1), (6, 0.9), (8, 0.1)))
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "scores")]
    start, end = events
    assert start.event_id == end.event_id == "ep1"
    # the median of 3 crosses one frame after the scores do; the event is dated then, not 1 s later
    assert start.t == pytest.approx(5.1, abs=0.01)
    assert end.t == pytest.approx(11.1, abs=0.01)
    assert start.wall_time == pytest.approx(WALL_EPOCH + start.t)
    assert start.probability >= 0.6 and end.probability < 0.4


def test_state_shows_crying_since_the_start():
    alarm = make_alarm()
    run(alarm, scores((5, 0.1), (3, 0.9)))
    state = alarm.state
    assert state.crying and state.since == pytest.approx(5.1, abs=0.01)
    assert state.since_wall == pytest.approx(WALL_EPOCH + state.since)
    assert state.probability == pytest.approx(0.9) and state.event_id == "ep1"
    run(alarm, scores((3, 0.0), start=8.0))
    assert not alarm.state.crying and alarm.state.event_id is None


def test_flicker_shorter_than_min_on_does_not_trigger():
    alarm = make_alarm(smoothing="none")
    flicker = [(2, 0.1), (0.5, 0.95), (1, 0.1), (0.9, 0.95), (2, 0.1)]
    assert run(alarm, scores(*flicker)) == []


def test_a_score_that_asks_for_a_shorter_debounce_starts_sooner_never_later():
    from dataclasses import replace

    heard = [replace(s, min_on_seconds=0.3) for s in scores((2, 0.1), (0.5, 0.95), (2, 0.1))]
    events = run(make_alarm(smoothing="none"), heard)
    assert [e.kind for e in events] == ["start"] and events[0].t == pytest.approx(2.0)
    # without it, the alarm's own min_on_seconds (1 s) holds: half a second above is a flicker
    assert run(make_alarm(smoothing="none"), scores((2, 0.1), (0.5, 0.95), (2, 0.1))) == []
    # a longer one than the alarm's is not waited for
    slow = [replace(s, min_on_seconds=5.0) for s in scores((2, 0.1), (1.5, 0.95))]
    assert [e.kind for e in run(make_alarm(smoothing="none"), slow)] == ["start"]


def test_isolated_spikes_are_removed_by_the_median():
    alarm = make_alarm(min_on_seconds=0.0)
    spikes = [(0.1, 0.99) if i % 2 else (0.2, 0.05) for i in range(40)]
    assert run(alarm, scores(*spikes)) == []


def test_dropout_below_off_shorter_than_hold_keeps_the_episode():
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (4, 0.9), (1.5, 0.1), (4, 0.9), (5, 0.1)))
    assert [e.kind for e in events] == ["start", "end"]


def test_a_blip_back_between_the_thresholds_during_a_dip_does_not_restart_the_hold():
    """After the cry, talking scored 0.1 with one half-second blip to 0.5: the end is when the cry stopped.

    (The demo clip's end was dated 3.5 s late this way: the blip came just before the hold ran out.)
    """
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (4, 0.9), (1.5, 0.1), (0.5, 0.5), (4, 0.1)))
    assert [e.kind for e in events] == ["start", "end"]
    assert events[1].t == pytest.approx(6.1, abs=0.15)  # the cry stopped at 6.0 (median of 3 at 10 per s)


def test_back_between_the_thresholds_for_min_on_seconds_cancels_the_dip():
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (4, 0.9), (0.5, 0.1), (1.5, 0.5)))
    assert [e.kind for e in events] == ["start"] and alarm.crying  # 1.5 s of 0.5 after the dip: not a blip
    events = run(alarm, scores((3, 0.1), start=8.0))
    assert [e.kind for e in events] == ["end"] and events[0].t == pytest.approx(8.1, abs=0.15)  # not 6.1


def test_scores_between_the_thresholds_neither_start_nor_end():
    alarm = make_alarm()
    assert run(alarm, scores((10, 0.5))) == []
    run(alarm, scores((3, 0.9), start=10.0))
    assert alarm.crying
    assert run(alarm, scores((20, 0.5), start=13.0)) == []
    assert alarm.crying


def test_losing_the_face_keeps_the_state_for_a_while_then_ends_with_no_face():
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (3, 0.9), (2, 0.0, False)))
    assert [e.kind for e in events] == ["start"]  # 2 s without a face: still crying
    events = run(alarm, scores((2, 0.0, False), start=7.0))
    assert [(e.kind, e.reason) for e in events] == [("end", "no_face")]
    assert events[0].t == pytest.approx(4.9, abs=0.01)  # the last frame with a face


def test_face_returning_within_the_hold_continues_the_episode():
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (3, 0.9), (2.5, 0.0, False), (3, 0.9)))
    assert [e.kind for e in events] == ["start"] and alarm.crying


def test_any_status_that_cannot_perceive_holds_then_ends_with_that_status_as_reason():
    alarm = make_alarm()
    events = run(alarm, scores((2, 0.1), (3, 0.9)))
    assert [e.kind for e in events] == ["start"]
    blind = [Score(t=5.0 + i / FPS, probability=0.0, status="no_body") for i in range(20)]
    assert run(alarm, blind) == [] and alarm.crying  # 2 s < blind_seconds: still crying
    blind = [Score(t=7.0 + i / FPS, probability=0.0, status="no_body") for i in range(20)]
    events = run(alarm, blind)
    assert [(e.kind, e.reason) for e in events] == [("end", "no_body")]
    assert events[0].t == pytest.approx(4.9, abs=0.01)  # the last score that could see


def test_a_score_that_cannot_perceive_is_never_evidence_of_crying():
    alarm = make_alarm()
    assert run(alarm, [Score(t=i / FPS, probability=0.99, status="too_dark") for i in range(100)]) == []
    assert not Score(t=0.0, probability=0.99, status="too_dark").ok
    assert Score(t=0.0, probability=0.99).ok


def test_blind_seconds_is_also_read_under_its_older_name():
    assert AlarmConfig(no_face_seconds=1.5).blind_seconds == 1.5
    assert AlarmConfig(blind_seconds=2.5).blind_seconds == 2.5


def test_no_face_never_starts_an_episode():
    alarm = make_alarm()
    assert run(alarm, scores((10, 0.99, False))) == []


def test_cooldown_delays_a_new_start_after_an_end():
    alarm = make_alarm(cooldown_seconds=5.0)
    events = run(alarm, scores((1, 0.1), (3, 0.9), (2.5, 0.1), (10, 0.9)))
    kinds = [e.kind for e in events]
    assert kinds == ["start", "end", "start"]
    end_decided = 1 + 3 + 0.1 + 2.0  # the end was raised hold_seconds after the dip (median lag 0.1)
    assert events[2].t >= end_decided - 0.01
    # the second start comes only once the cooldown has passed
    alarm2 = make_alarm(cooldown_seconds=5.0)
    decided_at = None
    for score in scores((1, 0.1), (3, 0.9), (2.5, 0.1), (10, 0.9)):
        if [e for e in alarm2.update(score) if e.kind == "start" and e.event_id == "ep2"]:
            decided_at = score.t
    assert decided_at == pytest.approx(end_decided + 5.0, abs=0.15)


def test_shutdown_mid_cry_ends_the_episode():
    alarm = make_alarm()
    events = run(alarm, scores((1, 0.1), (3, 0.9)), finish_at=4.5)
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "shutdown")]
    assert events[1].t == 4.5 and events[0].event_id == events[1].event_id
    assert alarm.finish(5.0) == []  # nothing left to end


def test_ema_smoothing_triggers_later_than_raw_scores():
    raw = run(make_alarm(smoothing="none"), scores((2, 0.0), (4, 1.0)))
    ema = run(make_alarm(smoothing="ema", ema_alpha=0.2), scores((2, 0.0), (4, 1.0)))
    assert raw[0].t < ema[0].t


def test_default_thresholds_come_from_the_model_card():
    alarm = Alarm(AlarmConfig(), model_threshold=0.7)
    assert (alarm.on_threshold, alarm.off_threshold) == pytest.approx((0.7, 0.5))


@pytest.mark.parametrize(("on", "card"), [(0.15, 0.5), (None, 0.1)])
def test_a_low_on_threshold_still_has_an_off_that_scores_fall_below(on, card):
    """OFF was max(0, ON - 0.2): 0 for ON at 0.2 or below (set to be more sensitive, or a card's), and no score is
    below 0, so the first cry's alarm never ended (on the demo clip: at shutdown, 16 s after the cry)."""
    alarm = Alarm(AlarmConfig(smoothing="none", on_threshold=on, min_on_seconds=0.5, hold_seconds=1.0),
                  model_threshold=card, wall_clock=lambda t: WALL_EPOCH + t, new_id=lambda: "ep")
    assert 0 < alarm.off_threshold < alarm.on_threshold
    events = run(alarm, scores((2, 0.0), (3, 0.9), (8, 0.0)))
    assert [(e.kind, e.reason) for e in events] == [("start", ""), ("end", "scores")]


def test_scores_out_of_time_order_are_refused():
    alarm = make_alarm()
    alarm.update(Score(t=2.0, probability=0.1, face_seen=True))
    with pytest.raises(ValueError):
        alarm.update(Score(t=1.0, probability=0.1, face_seen=True))


def test_smoother_median_and_ema():
    median = Smoother("median", median_window=3)
    assert [median.add(v) for v in (1, 9, 2, 3)] == [1, 5, 2, 3]
    ema = Smoother("ema", ema_alpha=0.5)
    assert [ema.add(v) for v in (1, 3, 3)] == [1, 2, 2.5]


@pytest.mark.parametrize("seed", range(30))
def test_random_scores_give_matched_episodes_in_time_order(seed):
    rng = random.Random(seed)
    smoothing = rng.choice(["median", "ema", "none"])
    alarm = make_alarm(
        smoothing=smoothing,
        min_on_seconds=rng.choice([0.0, 0.5, 1.0]),
        hold_seconds=rng.choice([0.0, 1.0, 2.0]),
        cooldown_seconds=rng.choice([0.0, 3.0]),
        blind_seconds=rng.choice([0.5, 2.0]),
    )
    segments = [
        (rng.uniform(0.1, 4.0), rng.choice([0.05, 0.3, 0.5, 0.7, 0.95]), rng.random() > 0.2) for _ in range(60)
    ]
    events = run(alarm, scores(*segments))
    events += alarm.finish()
    assert all(a.t <= b.t for a, b in itertools.pairwise(events))
    assert [e.kind for e in events] == ["start", "end"] * (len(events) // 2)
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start.event_id == end.event_id
    assert len({e.event_id for e in events[::2]}) == len(events) // 2
    assert not alarm.crying
