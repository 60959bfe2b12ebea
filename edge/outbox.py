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

A damaged file (not a database, or pages that fail SQLite's ``quick_check``) is set aside as
``<outbox>.damaged-<time>`` and a new one started with the events and open episodes still readable in it; a
start whose end is not among them counts as open, so it gets its end.

A safety net, not a gate. One process at a time: a lock file beside the database (``flock``, held
until ``close()``) makes a second daemon pointed at the same outbox refuse to start, rather than end
the first one's running episode as if it had died. An outbox that cannot be written (disk full,
read-only file system) does not stop an event: the store moves to memory, ``fault`` says why (the
health endpoint and the stats show it), and events still reach the broker; only what waits for the
broker while the process dies is then lost. At start, an outbox that cannot be written but holds
undelivered events or an open episode is a ``ConfigError``: they could be neither delivered exactly
once nor ended.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")
# SQLite's result codes for a file that is not (or no longer) a database: only these set a file aside
DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}

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
        self.dropped = 0  # events dropped to stay within max_events, since this outbox was opened
        self.fault: str | None = None  # why events are kept in memory only; None while the disk works
        self._db: sqlite3.Connection | None = None
        self._lock = _lock_beside(self.path)
        try:
            self._db = self._open_on_disk()
            self._probe_write()
        except (OSError, sqlite3.Error) as error:
            self._refuse_if_it_holds_events(error)
            if self._db is not None:
                self._db.close()
            self._db = _open(":memory:")
            self._fail(error)

    def _open_on_disk(self) -> sqlite3.Connection:
        _make_parent(self.path)
        db = None
        try:
            db = _open(self.path)
            # a file whose header is sound but whose pages are not opens without error and fails at the first
            # read of its events, which was a traceback at every start (a crash loop under systemd)
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem == "ok":
                return db
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorcode", None) not in DAMAGED or not self.path.is_file():
                if db is not None:
                    db.close()
                raise
            problem = str(error)
        # a damaged outbox must not keep the monitor down: set it aside, start a new one with what can still be read
        rows = _salvage(db) if db is not None else {}
        if db is not None:
            db.close()
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        self.path.rename(aside)
        fresh = _open(self.path)
        for table, table_rows in rows.items():
            marks = ", ".join("?" * len(table_rows[0]))
            fresh.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", table_rows)  # noqa: S608
        # a start still waiting whose end is not there is an episode left open, whatever the damaged table said:
        # an ON must be followed by an OFF (one end too many is harmless, ends carry the episode's id)
        fresh.execute("INSERT OR IGNORE INTO open_episodes SELECT event_id, payload FROM events AS s WHERE kind = "
                      "'start' AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.kind = 'end' AND e.event_id = s.event_id)")
        events, episodes = (fresh.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608
                            for t in ("events", "open_episodes"))
        log.error("outbox %s is unreadable (%s): moved to %s, starting a new one with what could still be read "
                  "in it: %d undelivered events, %d open cry episodes", self.path, problem, aside, events, episodes)
        return fresh

    def _probe_write(self) -> None:
        """Fail now, not at the first cry, if the file cannot be written (read-only, disk full)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO dropped_episodes VALUES ('')")
            self._db.execute("DELETE FROM dropped_episodes WHERE event_id = ''")

    def _refuse_if_it_holds_events(self, error: Exception) -> None:
        """An unwritable outbox holding events or an open episode cannot keep the contract: a config error."""
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as db:
                events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
                episodes = db.execute("SELECT COUNT(*) FROM open_episodes").fetchone()[0]
        except sqlite3.Error:
            return  # nothing readable there: nothing to keep
        if events or episodes:
            self.close()
            raise ConfigError(
                f"outbox.path: {self.path} holds {events} undelivered events and {episodes} open cry episodes "
                f"but cannot be written ({_reason(error, self.path)}): free space or make it writable") from None

    def _fail(self, error: Exception) -> None:
        self.fault = (f"cannot write {self.path} ({_reason(error, self.path)}): cry events are kept in memory and "
                      "still delivered")
        log.error("outbox: %s to the broker until cryedge restarts (undelivered ones would not outlive a restart)",
                  self.fault)

    def _fail_over(self, error: Exception) -> None:
        """Move what the disk holds into memory, so that the rest of this run goes on as before."""
        memory = _open(":memory:")
        try:
            for table in ("events", "open_episodes", "dropped_episodes"):
                rows = self._db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - fixed names
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    memory.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)  # noqa: S608
        except sqlite3.Error as read_error:
            log.error("outbox: cannot read %s either (%s): its undelivered events are lost", self.path,
                      _reason(read_error))
        self._db.close()
        self._db = memory
        self._fail(error)

    def _write(self, operation: Callable[[], T]) -> T:
        """Run a write on the disk; when the disk refuses it, fail over to memory and run it there."""
        try:
            return operation()
        except sqlite3.Error as error:
            if self.fault is not None:
                raise
            self._fail_over(error)
            return operation()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # isolation_level=None is autocommit: without an explicit BEGIN each statement commits alone
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            # SQLite ends the transaction itself on some errors (a full disk: SQLITE_FULL); a ROLLBACK then fails
            # with "no transaction is active" and would stand in for the error that says what happened
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def add(self, event_id: str, kind: str, payload: str) -> int | None:
        """Store an event; returns its sequence number. Drops the oldest episodes when over the bound.

        None for the end of an episode whose start was dropped: it is dropped too.
        """
        return self._write(lambda: self._add(event_id, kind, payload))

    def _add(self, event_id: str, kind: str, payload: str) -> int | None:
        if kind == "end" and self._db.execute("SELECT 1 FROM dropped_episodes WHERE event_id = ?", (event_id,)).fetchone():
            with self._transaction():
                self._db.execute("DELETE FROM dropped_episodes WHERE event_id = ?", (event_id,))
            self.dropped += 1
            return None
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO events (event_id, kind, payload) VALUES (?, ?, ?)", (event_id, kind, payload)
            )
            if kind == "start":
                self._db.execute("INSERT OR REPLACE INTO open_episodes VALUES (?, ?)", (event_id, payload))
            else:
                self._db.execute("DELETE FROM open_episodes WHERE event_id = ?", (event_id,))
            self._enforce_bound()  # in the same transaction: a retry in memory must not add the event twice
        return int(cursor.lastrowid)

    def remove(self, seq: int) -> None:
        def remove() -> None:
            with self._transaction():
                self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))

        self._write(remove)

    def pending(self) -> list[Entry]:
        """All stored events, oldest first."""
        rows = self._db.execute("SELECT seq, event_id, kind, payload FROM events ORDER BY seq").fetchall()
        return [Entry(*row) for row in rows]

    def open_episodes(self) -> list[tuple[str, str]]:
        """(event_id, start payload) of episodes that started but never ended: the process died mid-cry."""
        return self._db.execute("SELECT event_id, start_payload FROM open_episodes ORDER BY rowid").fetchall()

    def _enforce_bound(self) -> None:
        """Within the caller's transaction."""
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
        """Close the database and let another process have the outbox."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _salvage(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """The rows of each table of a damaged outbox that can still be read, up to the first damaged page."""
    rows: dict[str, list[tuple]] = {}
    for table in ("events", "open_episodes", "dropped_episodes"):
        found: list[tuple] = []
        try:
            for row in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 - fixed names
                found.append(row)
        except sqlite3.Error:
            pass
        if found:
            rows[table] = found
    return rows


def _make_parent(path: Path) -> None:
    if path.parent.exists() and not path.parent.is_dir():  # mkdir would only say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{os.strerror(errno.ENOTDIR)}: {path.parent}")
    path.parent.mkdir(parents=True, exist_ok=True)


def _reason(error: Exception, path: Path | None = None) -> str:
    """The error in words; for SQLite's own vague ones ("unable to open database file"), what the OS says."""
    if isinstance(error, OSError):
        return _full(error) or error.strerror or str(error)
    if path is not None:
        try:
            with tempfile.TemporaryFile(dir=path.parent) as scratch:
                scratch.write(b"\0" * 4096)
                scratch.flush()
                os.fsync(scratch.fileno())
        except OSError as os_error:
            return _full(os_error) or f"{error}: {os_error.strerror or os_error}"
    return str(error)


def _full(error: OSError) -> str | None:
    """A full disk said as such, with the OS's words (SQLite's "database or disk is full" does not say which)."""
    return f"the disk is full: {error.strerror}" if error.errno == errno.ENOSPC else None


def _lock_beside(path: Path) -> int | None:
    """Hold ``<outbox>.lock`` for this process (``flock``); ``ConfigError`` if another process holds it.

    None where no lock file can be made: the outbox there cannot be written either, so there is
    nothing on disk for two processes to fight over.
    """
    lock_path = path.with_name(f"{path.name}.lock")
    try:
        _make_parent(path)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:  # a read-only directory may still hold the lock file an earlier run made
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            os.close(fd)
            return None
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise ConfigError(
            f"outbox.path: {path} is in use by another cryedge process{f' (pid {holder})' if holder.isdigit() else ''}; "
            "give each daemon its own outbox.path") from None
    try:  # who holds it, for the message above; a lock file that cannot be written still locks
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd
