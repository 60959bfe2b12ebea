"""The wall clock jumping under a cry: a Raspberry Pi has no real-time clock.

At boot its clock is what fake-hwclock saved (hourly, and at a clean shutdown), until NTP steps it; after a power
cut it can be an hour behind the time the previous run's events were dated with. The alarm's durations run on
the monotonic clock; what the events say of the wall clock must still never date an end before its start, which
a subscriber would read as a cry of negative length.
"""

from __future__ import annotations

import json

import pytest

from edge.alarm import Alarm
from edge.config import AlarmConfig
from edge.records import Score


def test_an_end_is_never_dated_before_its_start_when_ntp_sets_the_clock_back_during_the_cry():
    """NTP steps the clock back an hour in the middle of a 12 s cry: the end is dated its monotonic duration after
    the start (it was dated an hour before it); the next cry takes the corrected clock."""
    offset = [1_800_000_000.0]
    alarm = Alarm(AlarmConfig(min_on_seconds=0.5, hold_seconds=1.0, cooldown_seconds=0.0),
                  wall_clock=lambda t: t + offset[0])
    events = []
    for n in range(400):  # 10 scores a second
        t = n / 10
        if t == 8.0:
            offset[0] -= 3600.0
        crying = 2.0 <= t < 14.0 or 30.0 <= t < 34.0
        events += alarm.update(Score(t=t, probability=0.9 if crying else 0.1))
    (start, end, second_start, second_end) = events
    assert (start.kind, end.kind) == ("start", "end")
    assert end.wall_time - start.wall_time == pytest.approx(end.t - start.t) and end.t - start.t > 11.0
    assert second_end.wall_time - second_start.wall_time == pytest.approx(second_end.t - second_start.t)
    assert second_start.wall_time == second_start.t + offset[0]  # the clock as it is now


def test_a_cry_left_open_before_a_power_cut_is_not_ended_before_it_started(mosquitto, tmp_path):
    """The previous run started a cry an hour after what this boot's clock says now (fake-hwclock restored a time
    saved before the power cut); its restart end was dated now, an hour before its start."""
    import time

    from mqtt import Subscriber
    from test_publish import PREFIX, publisher_for, settings

    from edge.outbox import Outbox
    from edge.publish import event_payload
    from edge.records import AlarmEvent

    started = time.time() + 3600.0
    payload = event_payload(AlarmEvent("start", "ep-before-power-cut", 10.0, started, 0.93), "nursery", "cry-default")
    with Outbox(settings(mosquitto, tmp_path)["outbox"]["path"]) as outbox:
        outbox.add("ep-before-power-cut", "start", json.dumps(payload))
    with Subscriber(mosquitto, topics=(f"{PREFIX}/event",)) as subscriber, publisher_for(mosquitto, tmp_path):
        start, end = (json.loads(m.payload) for m in subscriber.wait_for(f"{PREFIX}/event", count=2))
    assert (start["event_type"], end["event_type"], end["reason"]) == ("cry_start", "cry_end", "restart")
    assert end["timestamp"] >= start["timestamp"] and end["time"] >= start["time"], (start, end)
