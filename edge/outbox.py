"""Cry events not yet acknowledged by the broker, on disk, in order, across restarts.

SQLite in the state directory (``synchronous=FULL``: each add is on disk before it returns). An
event is added before it is published and removed only when the broker's PUBACK arrives, so a
crash, a power cut or a broker that is away loses nothing; the price is that a subscriber may see
an event twice (QoS 1 is at-least-once anyway; events carry an id).

It also remembers episodes that started and have not ended yet, so that after a crash mid-cry the
next run can send the end that the dead process could not (reason ``"restart"``).

Bounded: over ``max_events`` the oldest episodes are dropped, start and end together, so a
subscriber never sees half of one. An end whose start was already delivered is never dropped:
it is what turns the alert off.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS open_episodes (
    event_id TEXT PRIMARY KEY,
    start_payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dropped_episodes (
    event_id TEXT PRIMARY KEY
);
"""


@dataclass(frozen=True)
class Entry:
    seq: int  # order of arrival, kept across restarts
    event_id: str
    kind: str  # "start" or "end"
    payload: str  # the JSON published on the event topic


class Outbox:
    """Owned by one thread (the publisher's); ``close()`` when done."""

    def __init__(self, path: Path, max_events: int = 1000):
        self.path = Path(path)
        self.max_events = max_events
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as error:
                if not self.path.is_file():
                    raise
                # a damaged outbox must not keep the monitor down: set it aside, start a new one
                aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
                self.path.rename(aside)
                log.error("outbox %s is unreadable (%s): moved to %s, starting an empty one", self.path, error, aside)
                self._db = self._open()
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"outbox.path: cannot open {self.path}: {error}") from None
        self.dropped = 0  # events dropped to stay within max_events, since this outbox was opened

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise
        return db

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def add(self, event_id: str, kind: str, payload: str) -> int | None:
        """Store an event; returns its sequence number. Drops the oldest episodes when over the bound.

        None for the end of an episode whose start was dropped: it is dropped too.
        """
        if kind == "end" and self._db.execute("SELECT 1 FROM dropped_episodes WHERE event_id = ?", (event_id,)).fetchone():
            with self._db:
                self._db.execute("DELETE FROM dropped_episodes WHERE event_id = ?", (event_id,))
            self.dropped += 1
            return None
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO events (event_id, kind, payload) VALUES (?, ?, ?)", (event_id, kind, payload)
            )
            if kind == "start":
                self._db.execute("INSERT OR REPLACE INTO open_episodes VALUES (?, ?)", (event_id, payload))
            else:
                self._db.execute("DELETE FROM open_episodes WHERE event_id = ?", (event_id,))
        self._enforce_bound()
        return int(cursor.lastrowid)

    def remove(self, seq: int) -> None:
        with self._db:
            self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))

    def pending(self) -> list[Entry]:
        """All stored events, oldest first."""
        rows = self._db.execute("SELECT seq, event_id, kind, payload FROM events ORDER BY seq").fetchall()
        return [Entry(*row) for row in rows]

    def open_episodes(self) -> list[tuple[str, str]]:
        """(event_id, start payload) of episodes that started but never ended: the process died mid-cry."""
        return self._db.execute("SELECT event_id, start_payload FROM open_episodes ORDER BY rowid").fetchall()

    def _enforce_bound(self) -> None:
        excess = len(self) - self.max_events
        if excess <= 0:
            return
        entries = self.pending()
        starts_here = {e.event_id for e in entries if e.kind == "start"}
        doomed: list[int] = []
        dropped_ids: set[str] = set()
        for entry in entries:
            if len(doomed) >= excess:
                break
            if entry.kind == "end" and entry.event_id not in starts_here:
                continue  # its start was delivered: this end turns the alert off, keep it
            if entry.kind == "start":
                dropped_ids.add(entry.event_id)
            doomed.append(entry.seq)
        # an episode goes as a whole: the end of a dropped start goes too
        doomed += [e.seq for e in entries if e.kind == "end" and e.event_id in dropped_ids and e.seq not in doomed]
        if not doomed:
            return
        ended = {e.event_id for e in entries if e.kind == "end"}
        with self._db:
            self._db.executemany("DELETE FROM events WHERE seq = ?", [(seq,) for seq in doomed])
            for event_id in dropped_ids - ended:  # its end is still to come: drop that too when it does
                self._db.execute("DELETE FROM open_episodes WHERE event_id = ?", (event_id,))
                self._db.execute("INSERT OR REPLACE INTO dropped_episodes VALUES (?)", (event_id,))
        self.dropped += len(doomed)
        log.warning(
            "outbox full (%d events): dropped the %d oldest undelivered events (%d in all so far)",
            self.max_events,
            len(doomed),
            self.dropped,
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
