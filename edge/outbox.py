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

A safety net, not a gate. One process at a time: a lock beside the database (``flock`` on
``<outbox>.lock``, held until ``close()``; where that cannot be used, say a folder stands there, on the
database file itself) makes a second daemon pointed at the same outbox refuse to start, rather than end
the first one's running episode as if it had died. An outbox that cannot be written (disk full,
read-only file system) does not stop an event: the store moves to a database in the runtime directory
(``runtime_directory()``, a tmpfs that stays writable when the SD card is not, kept across restarts of the
service, emptied by a reboot; ``kept_in``), or to memory without one, ``fault`` says why (the health endpoint
and the stats show it), and events still reach the broker; what waits for the broker when the process stops
is delivered by the next run (from memory it is lost). At start, what an unwritable outbox holds (also one
that is damaged and cannot be set aside) is read without writing and carried into that store, after what an
earlier run kept there: its events are delivered and its open episodes ended; the first run that can write
the file again moves into it what is kept there. The file cannot be told so: what the broker acknowledged of it is
noted instead in the runtime directory (``runtime_directory()``, a tmpfs that stays writable when the SD card
is not, kept across restarts of the service), so that a restart while it stays unwritable skips it, rather than
alerting a parent again about a cry long over; the first run that can write the file removes it there. An
event is noted only once acknowledged, so one not delivered is never skipped. Without a runtime directory
a restart delivers them again (the same ids: at least once, as ever).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sqlite3
import stat
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
TABLES = ("events", "open_episodes", "dropped_episodes")

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

    def __init__(self, path: Path, max_events: int = 1000, runtime_dir: Path | None = None):
        """``runtime_dir``: where to note what is delivered while the file cannot be written (``runtime_directory()``);
        None: nowhere, a restart delivers it again."""
        self.path = Path(path)
        self.max_events = max_events
        self.dropped = 0  # events dropped to stay within max_events, since this outbox was opened
        self.fault: str | None = None  # why events are not kept in the file (``kept_in``); None while the disk works
        self._db: sqlite3.Connection | None = None
        self._runtime_dir = Path(runtime_dir) if runtime_dir is not None else None
        self._delivered = Delivered(self._runtime_dir, self.path) if self._runtime_dir is not None else None
        # while the file cannot be written, the database in the runtime directory that holds the events instead;
        # None: the file works, or they are in memory only
        self.kept_in: Path | None = None
        # while the file cannot be written, what it holds: (event id, kind) of its events, ids of its open episodes
        self._file_events: set[tuple[str, str]] = set()
        self._file_open: set[str] = set()
        self._salvaged: dict[str, list[tuple]] | None = None  # what a damaged file held, while it is set aside
        self._damage = ""  # what is wrong with that file
        self._lock, self._lock_on_outbox = _lock(self.path)
        try:
            self._db = self._open_on_disk()
            _probe_write(self._db)
            self._forget_delivered_on_disk()
            self._take_kept()
        except (OSError, sqlite3.Error) as error:
            if self._db is not None:
                self._db.close()
            self._db = self._open_kept()
            self._fail(error, self._carry_over())

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
        self._salvaged = _salvage(db) if db is not None else {}
        self._damage = problem
        if db is not None:
            db.close()
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        # the new file is made beside it first: a disk that refuses it (full, read-only) leaves the damaged one
        # in place, for this run to carry into the runtime directory's store (or memory) and the next to salvage again
        new = self.path.with_name(f"{self.path.name}.salvaged")
        try:
            with contextlib.suppress(FileNotFoundError):
                new.unlink()  # a half-made one of an earlier run
            with contextlib.closing(_open(new)) as fresh:
                events, episodes = _insert(fresh, self._salvaged, damaged=True)
            self.path.rename(aside)
            new.rename(self.path)
        except (OSError, sqlite3.Error):
            with contextlib.suppress(OSError):
                new.unlink()
            raise
        if self._lock_on_outbox:  # the lock was on the file now set aside
            os.close(self._lock)
            self._lock, self._lock_on_outbox = _lock(self.path, say=False)
        self._salvaged = None
        log.error("outbox %s is unreadable (%s): moved to %s, starting a new one with what could still be read "
                  "in it: %d undelivered events, %d open cry episodes", self.path, problem, aside, events, episodes)
        return _open(self.path)

    def _kept_path(self) -> Path | None:
        """The database in the runtime directory that holds the events while the file cannot be written."""
        return self._runtime_dir / f"outbox-{_digest(self.path)}.sqlite3" if self._runtime_dir is not None else None

    def _open_kept(self, fresh: bool = False) -> sqlite3.Connection:
        """Where the events go while the file cannot be written: the database in the runtime directory (a tmpfs that
        stays writable, kept across restarts of the service, not a reboot), which the next run reads, so that a stop
        with the broker away loses none; memory where there is no runtime directory or it refuses.

        ``fresh``: without what an earlier run kept there (the file, writable until now, took that in).
        """
        kept = self._kept_path()
        self.kept_in = None
        if kept is None:
            return _open(":memory:")
        db = None
        try:
            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if fresh:
                _remove_database(kept)
            db = _open(kept)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("it is damaged")
            _probe_write(db)
        except (OSError, sqlite3.Error) as error:
            if db is not None:
                db.close()
            log.error("outbox: cannot keep cry events in %s either (%s): they are kept in memory only", kept,
                      _reason(error, kept))
            memory = _open(":memory:")
            if not fresh:  # what an earlier run kept there is still delivered
                _insert(memory, _read_only(kept)[0])
            return memory
        self.kept_in = kept
        return db

    def _take_kept(self) -> None:
        """The file can be written again: into it what a run that could not write it kept in the runtime directory."""
        kept = self._kept_path()
        if kept is None or not kept.is_file():
            return
        rows, _ = _read_only(kept)
        with self._transaction():
            events = _merge(self._db, rows)
        if events:
            log.info("outbox: moved into %s %d undelivered events kept in %s while it could not be written", self.path,
                     events, kept)
        try:
            _remove_database(kept)
        except OSError as error:
            log.warning("outbox: cannot remove %s (%s): a later run may deliver its events again", kept,
                        error.strerror or error)

    def _carry_over(self) -> tuple[int, int, int, int, int]:
        """Into the store (``_open_kept``), what the outbox that cannot be written holds, read without writing, less
        what an earlier run delivered of it; (events, open episodes, events skipped as delivered, open episodes whose
        end was delivered, undelivered events an earlier run kept in the runtime directory).

        Its events are delivered from there and its open episodes ended, as from a working outbox: an unwritable
        SD card must not keep the monitor down, nor turn an alert that went out into one that never ends.
        """
        if self._salvaged is not None:  # damaged, and could not be set aside
            rows, damaged = self._salvaged, True
        else:
            rows, damaged = _read_only(self.path)
        with contextlib.closing(_open(":memory:")) as held:
            try:
                _insert(held, rows, damaged)
            except sqlite3.Error as error:  # rows of another shape: what went in still goes out
                log.error("outbox: cannot carry all that %s holds into memory (%s)", self.path, error)
            file_rows = _salvage(held)
        self._note_file_rows(file_rows)
        # by event, after what an earlier run kept in the store: it holds those of the file it did not deliver
        try:
            with self._transaction():
                _merge(self._db, file_rows)
        except sqlite3.Error as error:  # the runtime directory is full
            self._kept_to_memory(error)
            _merge(self._db, file_rows)
        skipped = self._forget(self._delivered.read() if self._delivered is not None else set())
        pending = self.pending()
        events = sum(1 for e in pending if (e.event_id, e.kind) in self._file_events)
        episodes = sum(1 for event_id, _ in self.open_episodes() if event_id in self._file_open)
        return events, episodes, *skipped, len(pending) - events

    def _note_file_rows(self, rows: dict[str, list[tuple]]) -> None:
        """What the file that cannot be written holds (its ``rows``, table -> rows): the next run reads it again."""
        self._file_events = {(event_id, kind) for _, event_id, kind, _ in rows.get("events", [])}
        self._file_open = {event_id for event_id, _ in rows.get("open_episodes", [])}

    def _forget(self, delivered: set[tuple[str, str]]) -> tuple[int, int]:
        """Drop the events in ``delivered`` ((event id, kind)) and the open episodes whose end is in it; how many of each."""
        if not delivered:
            return 0, 0
        events = [(seq,) for seq, event_id, kind in self._db.execute("SELECT seq, event_id, kind FROM events")
                  if (event_id, kind) in delivered]
        ended = [(event_id,) for (event_id,) in self._db.execute("SELECT event_id FROM open_episodes")
                 if (event_id, "end") in delivered]
        self._db.executemany("DELETE FROM events WHERE seq = ?", events)
        self._db.executemany("DELETE FROM open_episodes WHERE event_id = ?", ended)
        return len(events), len(ended)

    def _forget_delivered_on_disk(self) -> None:
        """The file can be written again: take out of it what a run that could not write it delivered."""
        delivered = self._delivered.read() if self._delivered is not None else set()
        if not delivered:
            return
        with self._transaction():
            events, episodes = self._forget(delivered)
        if events or episodes:
            log.info("outbox: removed from %s %d events and %d open cry episodes delivered while it could not be "
                     "written", self.path, events, episodes)
        self._delivered.clear()

    def _fail(self, error: Exception, carried: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)) -> None:
        store = f"{self.kept_in} (the runtime directory)" if self.kept_in is not None else "memory"
        said = f"cannot write {self.path} ({_reason(error, self.path)}): cry events are kept in {store} and still delivered"
        held = f"; it is damaged ({self._damage})" if self._salvaged is not None else ""  # and could not be set aside
        if any(carried[:2]):
            again = (f"noted in {self._delivered.path} once delivered, not delivered again after a restart"
                     if self._delivered is not None else
                     "again after a restart while it cannot be written: no runtime directory to note them in")
            held += (f"; the {carried[0]} undelivered events and {carried[1]} open cry episodes it holds are read into "
                     f"{'the runtime directory' if self.kept_in is not None else 'memory'} and delivered ({again})")
        if any(carried[2:4]):
            held += (f"; an earlier run delivered {carried[2]} of the events it holds and the end of {carried[3]} of "
                     f"its open cry episodes (noted in {self._delivered.path}): not sent again")
        if carried[4]:
            held += f"; {carried[4]} undelivered events an earlier run kept in the runtime directory are delivered"
        self.fault = said + held
        lost = ("what comes in meanwhile and is not delivered stays there for the next run, unless the machine restarts "
                "first" if self.kept_in is not None else
                "what comes in meanwhile and is not delivered before a restart is lost")
        log.error("outbox: %s to the broker until cryedge restarts (%s)%s", said, lost, held)

    def _fail_over(self, error: Exception) -> None:
        """Move what the store holds to the next one (the file's to the runtime directory or memory, the runtime
        directory's to memory), so that the rest of this run goes on as before."""
        if self.fault is not None:
            self.fault += f"; {self._kept_to_memory(error)}"
            return
        try:
            rows = {table: self._db.execute(f"SELECT * FROM {table}").fetchall() for table in TABLES}  # noqa: S608
        except sqlite3.Error as read_error:
            log.error("outbox: cannot read %s either (%s): its undelivered events are lost", self.path,
                      _reason(read_error))
            rows = {}
        self._db.close()
        self._db = self._open_kept(fresh=True)
        self._note_file_rows(rows)
        try:
            with self._transaction():
                _insert(self._db, rows)
        except sqlite3.Error as kept_error:
            self._kept_to_memory(kept_error)
            _insert(self._db, rows)
        self._fail(error)

    def _kept_to_memory(self, error: Exception) -> str:
        """The runtime directory refuses a write too (full): what its store holds into memory, for the rest of this
        run; what happened, in words (said once)."""
        memory = _open(":memory:")
        _insert(memory, _salvage(self._db))
        self._db.close()
        self._db = memory
        said = f"cannot write {self.kept_in} either ({_reason(error, self.kept_in)}): kept in memory only from now on"
        self.kept_in = None
        log.error("outbox: %s (what is not delivered before a restart is lost)", said)
        return said

    def _write(self, operation: Callable[[], T]) -> T:
        """Run a write on the store; when it refuses it (the disk, then the runtime directory), fail over to the next
        store (``_fail_over``) and run it there."""
        try:
            return operation()
        except sqlite3.Error as error:
            if self.fault is not None and self.kept_in is None:
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
        """The broker acknowledged the event: forget it (and, while the file cannot be told so, note it)."""
        def remove() -> None:
            with self._transaction():
                self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))

        row = self._db.execute("SELECT event_id, kind FROM events WHERE seq = ?", (seq,)).fetchone()
        self._write(remove)  # which may find the disk gone and move to memory (a fault from now on)
        # only what the file holds (an event, or the end of an episode open in it) would be sent again by the next run
        if row is not None and self.fault is not None and self._delivered is not None and self._held_by_file(*row):
            if not self._delivered.add(*row):
                self._delivered = None  # said once; from now on the next run delivers them again

    def _held_by_file(self, event_id: str, kind: str) -> bool:
        """While the file cannot be written: the next run reads this event from it (it holds the event, or the
        episode it ends is open in it and would get a ``restart`` end)."""
        return (event_id, kind) in self._file_events or (kind == "end" and event_id in self._file_open)

    def undelivered(self) -> tuple[int, int, int]:
        """Events not acknowledged yet: (those the file keeps for the next run, those the runtime directory keeps for
        it (``kept_in``), those only in memory, lost at exit).

        While the file cannot be written, the next run still delivers what it holds, and the end of an episode open in
        it (as a ``restart`` end); what came in since is in the runtime directory, or in memory only.
        """
        entries = self.pending()
        if self.fault is None:
            return len(entries), 0, 0
        in_file = sum(1 for e in entries if self._held_by_file(e.event_id, e.kind))
        rest = len(entries) - in_file
        return (in_file, rest, 0) if self.kept_in is not None else (in_file, 0, rest)

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
        if self._delivered is not None:
            self._delivered.close()
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


def runtime_directory(environ=os.environ) -> Path | None:
    """Where an outbox that cannot be written notes what it delivered: ``$RUNTIME_DIRECTORY`` (systemd's
    ``RuntimeDirectory=``, /run/cryedge), else ``$XDG_RUNTIME_DIR/cryedge`` (a user's, for ``cryedge run`` by hand);
    None without either.

    A tmpfs (/run): writable when the SD card is not. It is emptied at boot: after a reboot with the card still
    read-only, what the card holds is delivered once more.
    """
    if environ.get("RUNTIME_DIRECTORY"):
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])  # systemd may pass several; the first is ours
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "cryedge"
    return None


class Delivered:
    """The events of an outbox that cannot be written which the broker acknowledged, as (event id, kind), in a file of
    the runtime directory: what the outbox itself cannot be told, so that a restart does not send them again.

    One file an outbox (named by a digest of its path), a line an event, appended once acknowledged: a line cut short
    (a process killed while writing it) is not read, so an event is skipped only when it was delivered.
    """

    def __init__(self, directory: Path, outbox: Path):
        self.path = directory / f"delivered-{_digest(outbox)}"
        self.outbox = outbox
        self._fd: int | None = None

    def read(self) -> set[tuple[str, str]]:
        try:
            text = self.path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return set()
        except OSError as error:
            log.warning("outbox: cannot read %s (%s): what it noted as delivered may be delivered again", self.path,
                        error.strerror or error)
            return set()
        delivered = set()
        for line in text.split("\n")[:-1]:  # the last part has no newline: cut short, or empty
            kind, _, event_id = line.partition(" ")
            if kind in ("start", "end") and event_id:
                delivered.add((event_id, kind))
        return delivered

    def add(self, event_id: str, kind: str) -> bool:
        """Note one event as delivered; False (said once) if the runtime directory refuses it."""
        try:
            if self._fd is None:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                size = os.fstat(self._fd).st_size
                if size == 0:
                    os.write(self._fd, f"# cryedge: delivered events of {self.outbox}, which could not be written\n"
                             .encode(errors="replace"))
                elif os.pread(self._fd, 1, size - 1) != b"\n":  # a line cut short stays one that is not read
                    os.write(self._fd, b"\n")
            os.write(self._fd, f"{kind} {event_id}\n".encode(errors="replace"))  # one write: all of the line or none
            return True
        except OSError as error:
            log.warning("outbox: cannot note delivered events in %s (%s): a restart while %s cannot be written will "
                        "deliver them again", self.path, error.strerror or error, self.outbox)
            self.close()
            return False

    def clear(self) -> None:
        """The outbox can be written again and no longer holds what was noted."""
        self.close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("outbox: cannot remove %s (%s)", self.path, error.strerror or error)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _digest(outbox: Path) -> str:
    """Names an outbox's files in the runtime directory (one set an outbox)."""
    return hashlib.sha256(str(outbox.absolute()).encode()).hexdigest()[:16]


def _probe_write(db: sqlite3.Connection) -> None:
    """Fail now, not at the first cry, if the database cannot be written (read-only, disk full)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT OR REPLACE INTO dropped_episodes VALUES ('')")
        db.execute("DELETE FROM dropped_episodes WHERE event_id = ''")
    except sqlite3.Error:
        if db.in_transaction:  # SQLite may have ended it itself (a full disk)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _remove_database(path: Path) -> None:
    """A database and its journal; OSError if they stay."""
    for name in (path, path.with_name(f"{path.name}-journal")):
        name.unlink(missing_ok=True)


def _merge(db: sqlite3.Connection, rows: dict[str, list[tuple]]) -> int:
    """Add to ``db`` the events of ``rows`` (table -> rows) it does not hold (by event id and kind), in their order after
    its own, and their open and dropped episodes; how many events it took. An episode whose end it then holds is not
    open (the end is in the table for ``add``'s reason)."""
    held = set(db.execute("SELECT event_id, kind FROM events"))
    new = [(event_id, kind, payload) for _, event_id, kind, payload in sorted(rows.get("events", []))
           if (event_id, kind) not in held]
    db.executemany("INSERT INTO events (event_id, kind, payload) VALUES (?, ?, ?)", new)
    db.executemany("INSERT OR IGNORE INTO open_episodes VALUES (?, ?)", rows.get("open_episodes", []))
    db.executemany("INSERT OR IGNORE INTO dropped_episodes VALUES (?)", rows.get("dropped_episodes", []))
    db.execute("DELETE FROM open_episodes WHERE event_id IN (SELECT event_id FROM events WHERE kind = 'end')")
    return len(new)


def _open(path: Path | str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _insert(db: sqlite3.Connection, rows: dict[str, list[tuple]], damaged: bool = False) -> tuple[int, int]:
    """Put ``rows`` (table -> rows) into ``db``; (events, open episodes) it then holds.

    ``damaged``: the rows come from a damaged file, whose open episodes may be missing.
    """
    for table, table_rows in rows.items():
        if table_rows:
            marks = ", ".join("?" * len(table_rows[0]))
            db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({marks})", table_rows)  # noqa: S608 - fixed names
    if damaged:
        # a start still waiting whose end is not there is an episode left open, whatever the damaged table said:
        # an ON must be followed by an OFF (one end too many is harmless, ends carry the episode's id)
        db.execute("INSERT OR IGNORE INTO open_episodes SELECT event_id, payload FROM events AS s WHERE kind = "
                   "'start' AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.kind = 'end' AND e.event_id = s.event_id)")
    return _counts(db)


def _counts(db: sqlite3.Connection) -> tuple[int, int]:
    """(events, open episodes) in ``db``."""
    events, episodes = (db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608
                        for t in ("events", "open_episodes"))
    return events, episodes


def _read_only(path: Path) -> tuple[dict[str, list[tuple]], bool]:
    """The rows of the outbox at ``path`` (table -> rows), read without writing to it or its folder; and whether
    they may be incomplete (a damaged file, or one whose interrupted transaction could not be rolled back)."""
    if not path.is_file():
        return {}, False
    uri = path.absolute().as_uri()
    # mode=ro refuses a file whose hot journal it cannot roll back (SQLITE_READONLY_ROLLBACK, a process killed
    # mid-write on a card that then went read-only); immutable=1 reads it as it is, maybe half written
    for query, trusted in (("mode=ro", True), ("immutable=1", False)):
        try:
            with contextlib.closing(sqlite3.connect(f"{uri}?{query}", uri=True)) as db:
                try:
                    sound = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                except sqlite3.DatabaseError as error:
                    if getattr(error, "sqlite_errorcode", None) not in DAMAGED:
                        raise
                    sound = False
                return _salvage(db), not (sound and trusted)
        except sqlite3.Error:
            continue
    return {}, False


def _salvage(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """The rows of each table of a damaged outbox that can still be read, up to the first damaged page."""
    rows: dict[str, list[tuple]] = {}
    for table in TABLES:
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


def _lock(path: Path, say: bool = True) -> tuple[int | None, bool]:
    """Hold a lock on the outbox for this process (``flock``); ``ConfigError`` if another process holds it.

    The lock is ``<outbox>.lock``, which also names the holder's pid; where that cannot be used (a folder or
    a dangling link stands there) the outbox file itself, so that an unusable lock file never lets two daemons
    share an outbox. Returns (file descriptor, whether it is the outbox file's); (None, False) where neither
    can be opened: the outbox there cannot be read or written, there is nothing on disk to fight over.
    """
    lock_path = path.with_name(f"{path.name}.lock")
    for target, mode in ((lock_path, os.O_RDWR), (path, os.O_RDONLY)):
        fd, problem = _open_lock(target, mode)
        if fd is not None and _flock(fd, path, names_holder=target == lock_path):
            break
        fd, problem = None, problem or "it cannot be locked"
        # a folder without a lock file that cannot be made there is the disk's fault, which the outbox reports
        if target == lock_path and say and (lock_path.exists() or lock_path.is_symlink()):
            log.warning("outbox: cannot use %s as the lock (%s): locking %s itself", lock_path, problem, path)
    else:
        return None, False
    if target == lock_path:
        try:  # who holds it, for the message above; a lock file that cannot be written still locks
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
    return fd, target == path


def _flock(fd: int, path: Path, names_holder: bool) -> bool:
    """Lock ``fd`` for this process; False (``fd`` closed) if it cannot be locked, ``ConfigError`` if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as error:
        holder = ""
        if names_holder:
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            return False
    pid = f" (pid {holder})" if holder.isdigit() else ""
    raise ConfigError(f"outbox.path: {path} is in use by another cryedge process{pid}; give each daemon its own "
                      "outbox.path") from None


def _open_lock(path: Path, mode: int) -> tuple[int | None, str]:
    """A regular file at ``path``, opened (made if missing) to be locked, or read-only as it is (a read-only folder
    may hold the file an earlier run made); else (None, why not)."""
    try:
        _make_parent(path)
        fd = os.open(path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None, error.strerror or str(error)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None, "it is a folder" if path.is_dir() else "it is not a regular file"
    return fd, ""
