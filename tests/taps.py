"""Keeping what a running daemon publishes, for tests to assert on (it is still published)."""

from __future__ import annotations


def record_published(publisher, events: list | None = None, states: list | None = None) -> None:
    """From now on, every event ``publisher`` publishes is appended to ``events``, every state to ``states``."""
    if events is not None:
        publish_event = publisher.publish_event
        publisher.publish_event = lambda event: (events.append(event), publish_event(event))
    if states is not None:
        publish_state = publisher.publish_state
        publisher.publish_state = lambda state: (states.append(state), publish_state(state))
