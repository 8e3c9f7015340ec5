"""What this machine's runner rented, and which vast.ai machines let it down (local SQLite).

The database is ``$XDG_STATE_HOME/runner/registry.sqlite`` (else
``~/.local/state/runner/registry.sqlite``). Two tables, both prefixed ``vast_`` so the file can
hold other registries too:

- ``vast_instances``: every instance runner created (id, label, job, offer, machine, GPU,
  price, disk, image, SSH endpoint, started, status, reason, destroyed). ``status`` moves
  ``booting`` -> ``verified`` | ``failed``, and ``destroyed`` once runner destroyed it
  (``gone`` when vast.ai no longer lists it).
- ``vast_bad_machines``: machines a rental failed on, with the reason and time; searches skip
  them for :data:`BAD_MACHINE_TTL_S` (hosts get repaired), and a machine marked again keeps
  its count.

Every call opens its own short connection (several runner processes may share the file);
writes are single statements, so a killed process never leaves half a record.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from runner.cloud.vast import CloudError
from runner.errors import RunnerError

__all__ = [
    "BAD_MACHINE_TTL_S",
    "ENV_STATE_HOME",
    "BadMachine",
    "InstanceRecord",
    "Registry",
    "open_db",
    "state_dir",
]

#: XDG's state directory (default ``~/.local/state``); runner keeps ``runner/`` in it.
ENV_STATE_HOME = "XDG_STATE_HOME"
#: How long a bad machine is skipped (30 days).
BAD_MACHINE_TTL_S = 30 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vast_instances (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    job TEXT,
    offer_id INTEGER,
    machine_id INTEGER,
    gpu_name TEXT,
    num_gpus INTEGER,
    dph_total REAL,
    disk_gb REAL,
    image TEXT,
    ssh_host TEXT,
    ssh_port INTEGER,
    started REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    updated REAL NOT NULL,
    destroyed REAL
);
CREATE TABLE IF NOT EXISTS vast_bad_machines (
    machine_id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    marked REAL NOT NULL,
    instance_id INTEGER,
    count INTEGER NOT NULL DEFAULT 1
);
"""


@contextmanager
def open_db(
    path: Path, schema: str | None, error: type[RunnerError], what: str
) -> Iterator[sqlite3.Connection]:
    """One short connection to the SQLite file at ``path`` and one transaction, committed on
    success; ``schema`` (``CREATE ... IF NOT EXISTS``) run first. Any failure is ``error``,
    one line naming ``what`` and the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=10.0)
    except (OSError, sqlite3.Error) as exc:
        raise error(f"cannot open the {what} {path}: {exc}") from None
    with closing(conn):
        conn.row_factory = sqlite3.Row
        try:
            if schema is not None:
                conn.executescript(schema)
            with conn:
                yield conn
        except sqlite3.Error as exc:
            raise error(f"the {what} {path} failed: {exc}") from None


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/runner``, else ``~/.local/state/runner`` (not created here)."""
    env = os.environ if environ is None else environ
    base = env.get(ENV_STATE_HOME, "").strip()
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root / "runner"


@dataclass(frozen=True)
class InstanceRecord:
    """One instance runner created, as the registry remembers it."""

    id: int
    label: str
    job: str | None
    offer_id: int | None
    machine_id: int | None
    gpu_name: str | None
    num_gpus: int | None
    dph_total: float | None
    disk_gb: float | None
    image: str | None
    ssh_host: str | None
    ssh_port: int | None
    started: float
    status: str
    reason: str | None
    updated: float
    destroyed: float | None

    @property
    def live(self) -> bool:
        """Not yet destroyed by runner nor seen gone from the account."""
        return self.destroyed is None and self.status not in ("destroyed", "gone")


@dataclass(frozen=True)
class BadMachine:
    """A machine a rental failed on."""

    machine_id: int
    reason: str
    marked: float
    instance_id: int | None
    count: int


class Registry:
    """The local registry at ``path`` (default: :func:`state_dir` / ``registry.sqlite``)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else state_dir() / "registry.sqlite"
        self._ready = False

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with open_db(self.path, None if self._ready else _SCHEMA, CloudError, "registry") as db:
            self._ready = True
            yield db

    # -- instances -------------------------------------------------------------------------------

    def add_instance(
        self,
        instance_id: int,
        *,
        label: str,
        job: str | None = None,
        offer_id: int | None = None,
        machine_id: int | None = None,
        gpu_name: str | None = None,
        num_gpus: int | None = None,
        dph_total: float | None = None,
        disk_gb: float | None = None,
        image: str | None = None,
        status: str = "booting",
    ) -> None:
        """Remember a just-created instance (before anything else can fail)."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO vast_instances (id, label, job, offer_id, machine_id,"
                " gpu_name, num_gpus, dph_total, disk_gb, image, started, status, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance_id,
                    label,
                    job,
                    offer_id,
                    machine_id,
                    gpu_name,
                    num_gpus,
                    dph_total,
                    disk_gb,
                    image,
                    now,
                    status,
                    now,
                ),
            )

    def set_status(
        self,
        instance_id: int,
        status: str,
        *,
        reason: str | None = None,
        ssh: tuple[str, int] | None = None,
    ) -> None:
        """Move an instance's status; ``destroyed`` and ``gone`` also stamp the end time."""
        now = time.time()
        ended = now if status in ("destroyed", "gone") else None
        with self._db() as db:
            db.execute(
                "UPDATE vast_instances SET status = ?, reason = COALESCE(?, reason), updated = ?,"
                " destroyed = COALESCE(destroyed, ?),"
                " ssh_host = COALESCE(?, ssh_host), ssh_port = COALESCE(?, ssh_port)"
                " WHERE id = ?",
                (
                    status,
                    reason,
                    now,
                    ended,
                    ssh[0] if ssh else None,
                    ssh[1] if ssh else None,
                    instance_id,
                ),
            )

    def instance(self, instance_id: int) -> InstanceRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM vast_instances WHERE id = ?", (instance_id,)).fetchone()
        return _record(row) if row is not None else None

    def instances(self, *, live_only: bool = False) -> list[InstanceRecord]:
        """Every instance runner created here, oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM vast_instances ORDER BY started, id").fetchall()
        found = [_record(r) for r in rows]
        return [r for r in found if r.live] if live_only else found

    # -- bad machines ----------------------------------------------------------------------------

    def mark_bad(self, machine_id: int, reason: str, *, instance_id: int | None = None) -> None:
        """Remember ``machine_id`` as bad (again: the reason and time are refreshed)."""
        with self._db() as db:
            db.execute(
                "INSERT INTO vast_bad_machines (machine_id, reason, marked, instance_id, count)"
                " VALUES (?, ?, ?, ?, 1) ON CONFLICT(machine_id) DO UPDATE SET"
                " reason = excluded.reason, marked = excluded.marked,"
                " instance_id = excluded.instance_id, count = count + 1",
                (machine_id, reason, time.time(), instance_id),
            )

    def bad_machines(self, *, ttl_s: float = BAD_MACHINE_TTL_S) -> dict[int, BadMachine]:
        """Machines marked bad within ``ttl_s``, by id."""
        since = time.time() - ttl_s
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM vast_bad_machines WHERE marked >= ? ORDER BY marked", (since,)
            ).fetchall()
        return {
            int(r["machine_id"]): BadMachine(
                int(r["machine_id"]),
                str(r["reason"]),
                float(r["marked"]),
                r["instance_id"],
                int(r["count"]),
            )
            for r in rows
        }

    def forget_bad(self, machine_id: int) -> bool:
        """Take a machine off the bad list; returns whether it was on it."""
        with self._db() as db:
            cur = db.execute("DELETE FROM vast_bad_machines WHERE machine_id = ?", (machine_id,))
            return cur.rowcount > 0


def _record(row: sqlite3.Row) -> InstanceRecord:
    return InstanceRecord(
        id=int(row["id"]),
        label=str(row["label"]),
        job=row["job"],
        offer_id=row["offer_id"],
        machine_id=row["machine_id"],
        gpu_name=row["gpu_name"],
        num_gpus=row["num_gpus"],
        dph_total=row["dph_total"],
        disk_gb=row["disk_gb"],
        image=row["image"],
        ssh_host=row["ssh_host"],
        ssh_port=row["ssh_port"],
        started=float(row["started"]),
        status=str(row["status"]),
        reason=row["reason"],
        updated=float(row["updated"]),
        destroyed=row["destroyed"],
    )
