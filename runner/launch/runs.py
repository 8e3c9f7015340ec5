"""The run registry: every run this machine launched, where it runs and how it stands.

It lives in the same SQLite file as the instances (:class:`runner.cloud.registry.Registry`),
table ``runs``. ``runner launch`` adds a row before anything is started; ``runner runs``
refreshes each live row from the run folder (locally, or over SSH for a rented host) and
shows it. The state here is the control side's view:

- ``launching``: launch began (pre-flight passed, host being rented or started);
- ``running``: the agent wrote a status recently;
- ``silent``: the agent's own heartbeat stopped (host or agent unreachable): never shown as
  running;
- ``finished`` / ``failed`` / ``stopped``: what the agent said at the end;
- ``gone``: a rented host that no longer exists (it ends itself once its checkpoints are
  confirmed on the Hub), whose end state was not read before it went.

Every call opens its own short connection; writes are single statements.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runner.cloud.registry import open_db, state_dir
from runner.errors import RunnerError

__all__ = ["ENDED_STATES", "SILENT_AFTER_S", "RunRecord", "Runs", "new_run_id"]

#: The agent rewrites status.json every tick; this much silence means it is not there.
SILENT_AFTER_S = 60.0
#: States a run does not leave.
ENDED_STATES = frozenset({"finished", "failed", "stopped", "gone"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    profile TEXT,
    backend TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    instance_id INTEGER,
    ssh_host TEXT,
    ssh_port INTEGER,
    container TEXT,
    started REAL NOT NULL,
    state TEXT NOT NULL,
    step INTEGER,
    last_pushed_step INTEGER,
    hub_repo TEXT,
    dph_total REAL,
    cost REAL,
    forced TEXT,
    exit_code INTEGER,
    summary TEXT,
    ended REAL,
    updated REAL NOT NULL
);
"""


def new_run_id(job: str) -> str:
    """``JOB-YYYYmmdd-HHMMSS-xxxx``: sortable by time, unique, readable."""
    return f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunRecord:
    """One run, as the registry remembers it."""

    run_id: str
    job: str
    backend: str
    run_dir: str
    """The run folder on the machine that runs it (for vast: a path on the instance)."""
    started: float
    state: str
    updated: float
    profile: str | None = None
    instance_id: int | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    container: str | None = None
    step: int | None = None
    last_pushed_step: int | None = None
    hub_repo: str | None = None
    dph_total: float | None = None
    cost: float | None = None
    """Dollars so far (rented runs): hours from start to now, or to the end, x dph_total."""
    forced: str | None = None
    """Pre-flight items overridden with --force, comma-separated."""
    exit_code: int | None = None
    summary: str | None = None
    ended: float | None = None

    @property
    def live(self) -> bool:
        return self.state not in ENDED_STATES

    def cost_at(self, now: float | None = None) -> float | None:
        """Dollars spent by ``now`` (or by the end), from the hourly price."""
        if self.dph_total is None:
            return None
        end = self.ended if self.ended is not None else (now or time.time())
        return max(0.0, end - self.started) / 3600.0 * self.dph_total


_COLUMNS = tuple(f.name for f in fields(RunRecord))


class Runs:
    """The ``runs`` table of the registry at ``path`` (default: the instances' file)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else state_dir() / "registry.sqlite"

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with open_db(self.path, _SCHEMA, RunnerError, "run registry") as db:
            yield db

    def add(self, record: RunRecord) -> None:
        values = [getattr(record, c) for c in _COLUMNS]
        marks = ", ".join("?" for _ in _COLUMNS)
        with self._db() as db:
            db.execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})", values)

    def update(self, run_id: str, **changes: Any) -> RunRecord:
        """Change some fields of a run (``updated`` is stamped); returns the new record."""
        unknown = set(changes) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        changes["updated"] = time.time()
        if changes.get("state") in ENDED_STATES and "ended" not in changes:
            changes["ended"] = changes["updated"]
        sets = ", ".join(f"{k} = ?" for k in changes)
        with self._db() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE run_id = ?", [*changes.values(), run_id])
        found = self.get(run_id)
        if found is None:
            raise RunnerError(f"no run {run_id!r} in the registry; `runner runs` lists them")
        return found

    def get(self, run_id: str) -> RunRecord | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _record(row) if row is not None else None

    def all(self) -> list[RunRecord]:
        """Every run, oldest first."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY started, run_id").fetchall()
        return [_record(r) for r in rows]

    def find(self, ref: str | None = None) -> RunRecord:
        """The run named by ``ref`` (an id, a unique id prefix, or a job: its newest run);
        the newest run when ``ref`` is None. Raises :class:`RunnerError` if none matches."""
        runs = self.all()
        if not runs:
            raise RunnerError("no runs yet: start one with `runner launch JOB`")
        if ref is None:
            return runs[-1]
        exact = [r for r in runs if r.run_id == ref]
        if exact:
            return exact[0]
        of_job = [r for r in runs if r.job == ref]
        if of_job:
            return of_job[-1]
        prefixed = [r for r in runs if r.run_id.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0]
        if prefixed:
            names = ", ".join(r.run_id for r in prefixed[-3:])
            raise RunnerError(f"{ref!r} matches {len(prefixed)} runs ({names}); give more of it")
        raise RunnerError(f"no run {ref!r}; `runner runs` lists them")


def _record(row: sqlite3.Row | Mapping[str, Any]) -> RunRecord:
    return RunRecord(**{c: row[c] for c in _COLUMNS})


# --------------------------------------------------------------------------- refreshing


def read_run_files(record: RunRecord, *, timeout_s: float = 20.0) -> dict[str, Any] | None:
    """``status.json`` and ``push-state.json`` of a run, parsed: ``{"status": ..., "push": ...}``.

    Local and Docker runs are read from the folder; a rented run over SSH in one round trip.
    None when the folder cannot be reached (the host is gone or unreachable).
    """
    import json

    from runner.rundir import PUSH_STATE_FILE, STATUS_FILE

    names = (STATUS_FILE, PUSH_STATE_FILE)
    texts: dict[str, str] = {}
    if record.backend != "vast":
        for name in names:
            with suppress(OSError):
                texts[name] = (Path(record.run_dir) / name).read_text(encoding="utf-8")
    else:
        if not record.ssh_host or not record.ssh_port:
            return None
        import shlex

        from runner.cloud.ssh import Ssh, SshError, SshTarget, default_key_path

        marker = "\x1e"  # record separator: never in JSON text
        parts = [f"cat {shlex.quote(record.run_dir + '/' + n)} 2>/dev/null" for n in names]
        line = f"; printf '{marker}'; ".join(parts)
        target = SshTarget(record.ssh_host, record.ssh_port, name=f"vast-{record.instance_id}")
        try:
            done = Ssh(default_key_path(), connect_timeout_s=8).run(
                target, line, timeout_s=timeout_s
            )
        except SshError:
            return None
        for name, text in zip(names, done.stdout.split(marker), strict=False):
            if text.strip():
                texts[name] = text
    parsed: dict[str, Any] = {}
    for key, name in (("status", STATUS_FILE), ("push", PUSH_STATE_FILE)):
        try:
            parsed[key] = json.loads(texts[name]) if name in texts else None
        except ValueError:
            parsed[key] = None
    return parsed


def judge(record: RunRecord, files: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The registry fields a run's files imply (state, step, last pushed step, cost)."""
    changes: dict[str, Any] = {}
    status = (files or {}).get("status") or None
    push = (files or {}).get("push") or None
    if push and isinstance(push.get("pushed"), dict) and push["pushed"]:
        changes["last_pushed_step"] = max(int(k) for k in push["pushed"])
    if status:
        changes["step"] = status.get("step")
        changes["summary"] = status.get("summary") or record.summary
        state = str(status.get("state") or "running")
        if state in ("finished", "failed", "stopped"):
            changes["state"] = state
            changes["exit_code"] = status.get("exit_code")
            changes["ended"] = float(status.get("agent_time") or now)
        elif now - float(status.get("agent_time") or 0) > SILENT_AFTER_S:
            changes["state"] = "silent"
        else:
            changes["state"] = "running"
    elif files is None and record.state in ("running", "silent"):
        changes["state"] = "silent"
    if record.dph_total is not None:
        ended = changes.get("ended", record.ended)
        changes["cost"] = max(0.0, (ended or now) - record.started) / 3600.0 * record.dph_total
    return changes


def refresh(
    record: RunRecord,
    runs: Runs | None = None,
    *,
    instance_exists: Callable[[int], bool | None] | None = None,
) -> RunRecord:
    """Read a live run's folder and store what it says; ended runs come back unchanged.

    A rented run whose host cannot be reached is looked up on vast.ai
    (``instance_exists``, default :func:`vast_instance_exists`): a host that no longer
    exists makes the run ``gone``, one that does (or no answer) leaves it ``silent``.
    """
    if not record.live or (record.state == "launching" and time.time() - record.started < 5):
        return record
    now = time.time()
    files = read_run_files(record)
    changes = judge(record, files, now)
    if files is None and record.backend == "vast" and record.instance_id is not None:
        exists = (instance_exists or vast_instance_exists)(record.instance_id)
        if exists is False:
            pushed = record.last_pushed_step
            changes.update(
                state="gone",
                ended=record.updated,
                summary=f"the host is gone (instance {record.instance_id}); "
                + (f"last pushed step {pushed}" if pushed is not None else "nothing pushed seen"),
            )
            if record.dph_total is not None:
                changes["cost"] = record.cost_at(record.updated)
    changes = {k: v for k, v in changes.items() if getattr(record, k) != v}
    if not changes:
        return record
    return (runs or Runs()).update(record.run_id, **changes)


def vast_instance_exists(instance_id: int) -> bool | None:
    """Whether vast.ai still lists the instance; None when it cannot be asked."""
    from runner.cloud.vast import CloudError, VastApi

    try:
        return VastApi().show_instance(instance_id) is not None
    except CloudError:
        return None
