"""The host side of a launch: ``runner agent start RUN_DIR`` runs what ``launch.json`` says.

The same entry serves every backend, so a run behaves the same wherever it is: in the
job's container (Docker), on a rented host (started detached over SSH), or here. It reads
:class:`runner.rundir.Launch`, pulls the newest pushed checkpoint first when asked to
resume, and runs the training command under the agent (:class:`~runner.agent.supervisor.
Supervisor`) with the secrets it was handed (never read from, or written to, disk).

Before the run: a Hub dataset (``dataset.source: hub``) with a host path in ``launch.dataset``
is downloaded there at its pinned revision (:func:`fetch_hub_dataset`; a whole copy of that
revision is kept and reused).

Beside the run (every backend):

- caps: ``launch.max_hours`` and ``launch.max_cost`` (hours since the launch x
  ``launch.dph_total``) are checked every few seconds; when one is reached an event says which
  (``cap_hours`` / ``cap_cost``) and the run is stopped through
  :meth:`Supervisor.request_stop`, which ends it like any stop: the pusher pushes what is
  complete before the agent returns.

After the run (rented hosts, ``backend == "vast"``): the end policy. If every complete
checkpoint is confirmed on the Hub (``push-state.json`` against the checkpoints on disk), or
there is none, the instance ends itself per ``launch.end_policy`` (``destroy``, ``stop`` or
``keep``) with its OWN credentials, ``$CONTAINER_ID`` and ``$CONTAINER_API_KEY`` (read from
``/proc/1/environ`` when an SSH session's environment lacks them), through vast.ai's REST API
(``$VAST_URL``, forwarded at launch, default https://console.vast.ai). The user's vast.ai key
never reaches the host. With unpushed checkpoints the host is kept, and an event says why.
A run that failed (or that the agent stopped; not a cap) is stopped rather than destroyed
under the default policy: its GPUs stop billing, its logs and stack dumps stay readable.

Detached start (``--detach``, what ``runner launch`` runs over SSH): the agent leaves the SSH
session for good (fork, ``setsid``, fork again: not a session leader, no controlling
terminal, so neither the session's end nor a dropped connection reaches it), its output goes
to ``RUN_DIR/agent.log``, its pid to ``RUN_DIR/agent.pid``; the caller returns once the agent
wrote its first ``status.json`` (or is alive and still pulling a checkpoint). Secrets come on
standard input as JSON (``--secrets-stdin``), never in argv, a file or ``/etc/environment``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from runner.errors import RunnerError
from runner.rundir import (
    LAUNCH_FILE,
    PUSH_STATE_FILE,
    Backend,
    Event,
    EventLog,
    Launch,
    read_events,
    read_launch,
    read_status,
)
from runner.spec import JobSpec

if TYPE_CHECKING:
    from runner.agent.supervisor import Supervisor, SupervisorResult

__all__ = [
    "AGENT_LOG",
    "AGENT_PID",
    "DEFAULT_VAST_URL",
    "FORWARDED_ENV",
    "EndDecision",
    "cap_reached",
    "decide_end",
    "end_instance",
    "fetch_hub_dataset",
    "instance_credentials",
    "load_launch",
    "make_launch",
    "read_stdin_payload",
    "start_detached",
    "start_run",
]

#: The detached agent's own output (the training process's is in logs/attempt-N.log).
AGENT_LOG = "agent.log"
#: The detached agent's pid.
AGENT_PID = "agent.pid"
DEFAULT_VAST_URL = "https://console.vast.ai"
#: Non-secret variables ``runner launch`` forwards to the agent when set on the user's machine
#: (the Hub endpoint and its client switches, the vast.ai API base the host ends itself at).
FORWARDED_ENV = (
    "HF_ENDPOINT",
    "HF_HUB_DISABLE_XET",
    "HF_HUB_DISABLE_TELEMETRY",
    "HF_HUB_DISABLE_PROGRESS_BARS",
    "HF_HUB_ETAG_TIMEOUT",
    "HF_HUB_DOWNLOAD_TIMEOUT",
    "VAST_URL",
)
#: Seconds between two looks at the caps.
CAP_INTERVAL_S = 5.0

Say = Callable[[str], None]


def make_launch(
    spec: JobSpec,
    *,
    backend: Backend,
    argv: Sequence[str],
    env: Mapping[str, str],
    run_id: str | None = None,
    **fields: Any,
) -> Launch:
    """The launch record of ``spec`` run as ``argv``: the job's own environment first, then
    ``env`` (overrides, device), secrets by name; ``fields`` fill the rest of :class:`Launch`."""
    from runner.launch.runs import new_run_id

    return Launch(
        run_id=run_id or new_run_id(spec.name),
        job=spec.name,
        backend=backend,
        spec=spec.model_dump(mode="json"),
        argv=tuple(argv),
        env={**spec.env, **env},
        profile=spec.profile,
        secret_names=tuple(spec.secret_names),
        workdir=spec.workdir,
        **fields,
    )


def load_launch(run_dir: Path) -> tuple[Launch, JobSpec]:
    """The run's launch record and its job spec; :class:`RunnerError` when either is unusable."""
    launch = read_launch(run_dir)
    if launch is None:
        raise RunnerError(
            f"{run_dir / LAUNCH_FILE} is missing or unreadable; start runs with `runner launch`"
        )
    try:
        spec = JobSpec.model_validate(dict(launch.spec))
    except ValueError as exc:
        raise RunnerError(
            f"{run_dir / LAUNCH_FILE}: the job spec in it is invalid: {exc}"
        ) from None
    return launch, spec


def start_run(
    run_dir: Path,
    *,
    secrets: Mapping[str, str] | None = None,
    say: Say = lambda line: None,
    on_event: Callable[[Event], None] | None = None,
    end_host: bool | None = None,
) -> SupervisorResult:
    """Run the launch in ``run_dir`` under the agent until it ends; see the module docstring.

    ``secrets`` join this process's environment (the pusher reads ``HF_TOKEN`` from it, the
    training process inherits it); a container started with them has them there already.
    ``end_host`` applies the end policy once the run ended (default: for rented hosts only).
    """
    from runner.agent.supervisor import Supervisor
    from runner.launch.local import resume_from_hub

    run_dir = run_dir.resolve()
    launch, spec = load_launch(run_dir)
    os.environ.update(secrets or {})
    if spec.dataset.source == "hub" and launch.dataset:
        fetch_hub_dataset(spec, Path(launch.dataset), say)
    if launch.resume:
        resume_from_hub(spec, run_dir, say)
    supervisor = Supervisor(
        list(launch.argv),
        run_dir=run_dir,
        job=spec,
        extra_env=dict(launch.env),
        cwd=job_cwd(spec, launch, run_dir),
        dataset=launch.dataset,
        on_event=on_event,
    )
    caps = _CapWatch(supervisor, launch, run_dir, on_event)
    caps.start()
    try:
        result = supervisor.run()
    finally:
        caps.stop()
    if end_host if end_host is not None else launch.backend == "vast":
        end_after_run(run_dir, launch, spec, say=say, on_event=on_event)
    return result


# --------------------------------------------------------------------------- Hub dataset

#: Written last into a fetched Hub dataset: which repo and revision it is a whole copy of.
DATASET_MARKER = ".runner-dataset.json"


def fetch_hub_dataset(spec: JobSpec, dest: Path, say: Say = lambda line: None) -> Path:
    """The job's Hub dataset at its pinned revision, downloaded into ``dest`` (kept when a
    whole copy of that revision is there already). Raises :class:`RunnerError` in one line."""
    from runner.hub.client import HubClient, HubError

    ds = spec.dataset
    assert ds.repo is not None and ds.revision is not None  # the spec requires both for hub
    want = {"repo": ds.repo, "revision": ds.revision, "repo_type": ds.repo_type}
    marker = dest / DATASET_MARKER
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text(encoding="utf-8")) == want:
            say(f"dataset: {ds.repo}@{ds.revision} is here already ({dest})")
            return dest
    try:
        client = HubClient.from_env()
        files = client.list_files(ds.repo, "", revision=ds.revision, repo_type=ds.repo_type)
        size = sum(f.size for f in files.values())
        say(
            f"dataset: downloading {ds.repo}@{ds.revision} ({len(files)} files, "
            f"{size / 1e9:.2f} GB) to {dest}"
        )
        client.download(ds.repo, sorted(files), dest, revision=ds.revision, repo_type=ds.repo_type)
    except HubError as err:
        raise RunnerError(f"cannot fetch the dataset {ds.repo}@{ds.revision}: {err}") from None
    tmp = marker.with_name(f"{DATASET_MARKER}.tmp")
    tmp.write_text(json.dumps(want), encoding="utf-8")
    os.replace(tmp, marker)
    return dest


# --------------------------------------------------------------------------- caps


def cap_reached(launch: Launch, now: float) -> tuple[str, str] | None:
    """``(event kind, message)`` when the run is past ``max_hours`` or ``max_cost``, else None.

    Time counts from the launch (``launch.created``): a rented instance bills from then on.
    """
    hours = max(0.0, now - launch.created) / 3600.0
    took = f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"
    if launch.max_hours is not None and hours >= launch.max_hours:
        return (
            "cap_hours",
            f"--max-hours {launch.max_hours:g} reached ({took} since the launch): stopping the run",
        )
    if launch.max_cost is not None and launch.dph_total is not None:
        cost = hours * launch.dph_total
        if cost >= launch.max_cost:
            return (
                "cap_cost",
                f"--max-cost ${launch.max_cost:g} reached (${cost:.2f}: {took} at "
                f"${launch.dph_total:.3f}/h): stopping the run",
            )
    return None


class _CapWatch:
    """Checks the caps beside the supervisor; stops the run (once, with an event) at a cap."""

    def __init__(
        self,
        supervisor: Supervisor,
        launch: Launch,
        run_dir: Path,
        on_event: Callable[[Event], None] | None,
        interval_s: float = CAP_INTERVAL_S,
    ) -> None:
        self.supervisor = supervisor
        self.launch = launch
        self.run_dir = run_dir
        self.on_event = on_event
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.hit: str | None = None

    def start(self) -> None:
        if self.launch.max_hours is None and self.launch.max_cost is None:
            return
        self._thread = threading.Thread(target=self._loop, name="agent-caps", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        # A short first look: a cap already past at start stops the run at once.
        wait = min(1.0, self.interval_s)
        while not self._done.wait(wait):
            wait = self.interval_s
            if self.hit is not None:
                # Asked already; ask again in case no attempt was running to be stopped then.
                self.supervisor.request_stop(self.hit)
                continue
            found = cap_reached(self.launch, time.time())
            if found is None:
                continue
            kind, message = found
            self.hit = message
            _event(self.run_dir, Event(kind, "warning", message, action="stop"), self.on_event)
            self.supervisor.request_stop(message)


def _event(run_dir: Path, event: Event, on_event: Callable[[Event], None] | None) -> None:
    with contextlib.suppress(OSError):
        EventLog(run_dir).append(event)
    if on_event is not None:
        with contextlib.suppress(Exception):
            on_event(event)


# --------------------------------------------------------------------------- end policy


@dataclass(frozen=True)
class EndDecision:
    """What becomes of the host once the run ended, and why."""

    action: Literal["destroy", "stop", "keep"]
    reason: str
    unpushed: tuple[int, ...] = ()
    """Complete local checkpoints (steps) the Hub has not confirmed."""


def job_cwd(spec: JobSpec, launch: Launch, run_dir: Path) -> Path:
    """Where the job runs: its workdir where that exists here (in its image), else the run
    folder, so what a program writes relative to where it runs stays with the run."""
    workdir = launch.workdir or spec.workdir
    return Path(workdir) if workdir and Path(workdir).is_dir() else run_dir


def _checkpoint_root(spec: JobSpec, launch: Launch, run_dir: Path) -> Path:
    from runner.programs import RunContext, program_for

    cwd = job_cwd(spec, launch, run_dir)
    ctx = RunContext(run_dir=run_dir, cwd=cwd, env={})
    if (root := program_for(spec).checkpoint_root(spec, ctx)) is not None:
        return root
    path = Path(spec.checkpoints.path)
    if path.is_absolute():
        return path
    return (run_dir if spec.checkpoints.layout == "harness" else cwd) / path


def local_complete_steps(spec: JobSpec, launch: Launch, run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints on this disk (settled ones for foreign layouts)."""
    root = _checkpoint_root(spec, launch, run_dir)
    if not root.exists():
        return []
    from runner.hub.discovery import Scanner

    # The run has ended: nothing is still being written, so no settling time is needed.
    scan = Scanner(spec.checkpoints.layout, root, settle_s=0.0).scan()
    return sorted({c.step for c in scan.complete})


def pushed_steps(spec: JobSpec, run_dir: Path) -> set[int]:
    """Steps ``push-state.json`` says the Hub confirmed (for the job's repo)."""
    if spec.hub is None:
        return set()
    from runner.hub.pusher import PushState

    state = PushState.load(run_dir / PUSH_STATE_FILE, spec.hub.repo, spec.hub.repo_type)
    return set(state.pushed)


def decide_end(spec: JobSpec, launch: Launch, run_dir: Path) -> EndDecision:
    """The end policy for this run's host; see the module docstring. Never raises for disk
    contents (an unreadable checkpoint folder keeps the host)."""
    try:
        local = local_complete_steps(spec, launch, run_dir)
    except Exception as exc:  # a host whose checkpoints cannot be read is never destroyed
        return EndDecision("keep", f"its checkpoints could not be read ({exc})")
    pushed = pushed_steps(spec, run_dir)
    unpushed = tuple(s for s in local if s not in pushed)
    if unpushed:
        where = f"the Hub ({spec.hub.repo})" if spec.hub else "the Hub (the job has no hub:)"
        shown = ", ".join(str(s) for s in unpushed[-5:])
        return EndDecision(
            "keep",
            f"checkpoint step(s) {shown} are not confirmed on {where}; copy them off "
            "(`runner push`) before the host goes",
            unpushed,
        )
    what = (
        f"every checkpoint ({len(local)}) is confirmed on the Hub"
        if local
        else "the run left no checkpoint to push"
    )
    if launch.end_policy == "keep":
        return EndDecision("keep", f"{what}; --end keep")
    failed = _failure_to_keep(run_dir)
    if failed is not None and launch.end_policy == "destroy":
        # Its logs and stack dumps are the only evidence of why it failed, and they are on
        # this disk; a stopped instance no longer bills its GPUs.
        return EndDecision(
            "stop",
            f"{what}; {failed}: stopped, not destroyed, so its logs and stack dumps can still "
            f"be read (a stopped instance bills its disk only; `runner down "
            f"{launch.instance_id or 'ID'}` when done)",
        )
    return EndDecision(launch.end_policy, what)


def _failure_to_keep(run_dir: Path) -> str | None:
    """Why the run's evidence is worth its disk: it did not finish, and no cap stopped it."""
    status = read_status(run_dir)
    if status is None or status.state == "finished":
        return None
    if any(e.kind in ("cap_hours", "cap_cost") for e in read_events(run_dir)):
        return None  # stopped on purpose, with a final push
    return f"the run ended {status.state}"


def _proc_environ(path: Path) -> dict[str, str]:
    try:
        raw = path.read_bytes()
    except OSError:
        return {}
    found: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            found[key.decode(errors="replace")] = value.decode(errors="replace")
    return found


def instance_credentials(
    environ: Mapping[str, str] | None = None, *, proc_environ: Path = Path("/proc/1/environ")
) -> tuple[int, str] | None:
    """``(instance id, its own API key)``: ``$CONTAINER_ID`` / ``$CONTAINER_API_KEY`` from this
    environment, else from the container's first process (SSH sessions start without them)."""
    env = os.environ if environ is None else environ
    iid, key = env.get("CONTAINER_ID"), env.get("CONTAINER_API_KEY")
    if not (iid and key):
        first = _proc_environ(proc_environ)
        iid, key = iid or first.get("CONTAINER_ID"), key or first.get("CONTAINER_API_KEY")
    if not iid or not key or not iid.strip().isdigit():
        return None
    return int(iid.strip()), key.strip()


def end_instance(
    action: Literal["destroy", "stop"],
    instance_id: int,
    api_key: str,
    *,
    base_url: str | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Destroy or stop instance ``instance_id`` through vast.ai's REST API with its own key.

    Raises :class:`RunnerError` (the key never in it) when vast.ai refuses or cannot be reached.
    A destroy may kill this very process before the answer arrives: that is success.
    """
    base = (base_url or os.environ.get("VAST_URL") or DEFAULT_VAST_URL).rstrip("/")
    url = f"{base}/api/v0/instances/{instance_id}/"
    data = json.dumps({"state": "stopped"}).encode() if action == "stop" else None
    request = urllib.request.Request(
        url,
        data=data,
        method="DELETE" if action == "destroy" else "PUT",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").replace(api_key, "***")[:200]
        raise RunnerError(
            f"vast.ai refused to {action} instance {instance_id}: HTTP {exc.code} {text}"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise RunnerError(
            f"cannot reach vast.ai at {base} to {action} instance {instance_id}: "
            f"{getattr(exc, 'reason', exc)}"
        ) from None
    with contextlib.suppress(ValueError):
        if json.loads(body).get("success") is False:
            raise RunnerError(f"vast.ai refused to {action} instance {instance_id}: {body[:200]}")


def end_after_run(
    run_dir: Path,
    launch: Launch,
    spec: JobSpec,
    *,
    say: Say = lambda line: None,
    on_event: Callable[[Event], None] | None = None,
    environ: Mapping[str, str] | None = None,
    proc_environ: Path = Path("/proc/1/environ"),
) -> EndDecision:
    """Apply the end policy: decide, write the event, then end the instance (or keep it)."""
    decision = decide_end(spec, launch, run_dir)
    evidence = {"policy": launch.end_policy, "unpushed_steps": list(decision.unpushed)}
    if decision.action == "keep":
        message = f"host kept: {decision.reason}"
        kept = Event(
            "host_kept",
            "warning" if decision.unpushed else "info",
            message,
            evidence=evidence,
        )
        _event(run_dir, kept, on_event)
        say(message)
        return decision
    creds = instance_credentials(environ, proc_environ=proc_environ)
    if creds is None:
        message = (
            f"host kept: {decision.reason}, but $CONTAINER_ID/$CONTAINER_API_KEY are not set "
            f"here; end it with `runner down {launch.instance_id or 'ID'}`"
        )
        _event(run_dir, Event("host_kept", "warning", message, evidence=evidence), on_event)
        say(message)
        return EndDecision("keep", message)
    iid, key = creds
    verb = "destroying" if decision.action == "destroy" else "stopping"
    message = f"{verb} instance {iid}: {decision.reason}"
    # Written (durably) first: a destroy takes this process with it.
    _event(
        run_dir,
        Event(f"host_{decision.action}", "info", message, evidence={**evidence, "instance": iid}),
        on_event,
    )
    say(message)
    try:
        end_instance(decision.action, iid, key)
    except RunnerError as exc:
        failed = f"host kept: {exc}; end it with `runner down {iid}`"
        _event(run_dir, Event("host_end_failed", "critical", failed, evidence=evidence), on_event)
        say(failed)
        return EndDecision("keep", failed)
    return decision


# --------------------------------------------------------------------------- detached start


def read_stdin_payload(stream: IO[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(secrets, env)`` from the JSON on standard input: ``{"secrets": {...}, "env": {...}}``
    (a flat object of strings counts as secrets). Empty input is nothing. Raises
    :class:`RunnerError` naming no value when it is not that."""
    text = stream.read()
    if not text.strip():
        return {}, {}
    try:
        data = json.loads(text)
    except ValueError:
        raise RunnerError("--secrets-stdin: standard input is not JSON") from None
    if not isinstance(data, dict):
        raise RunnerError("--secrets-stdin: standard input must be a JSON object")
    if "secrets" in data or "env" in data:
        secrets, env = data.get("secrets") or {}, data.get("env") or {}
    else:
        secrets, env = data, {}
    for what, found in (("secrets", secrets), ("env", env)):
        if not isinstance(found, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in found.items()
        ):
            raise RunnerError(f"--secrets-stdin: {what} must be an object of strings")
    return dict(secrets), dict(env)


def start_detached(
    run_dir: Path,
    *,
    secrets: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    confirm_s: float = 60.0,
) -> int:
    """Start the agent for ``run_dir`` detached (see the module docstring); returns its pid
    once it is up. Raises :class:`RunnerError` with the agent's last line when it died first."""
    run_dir = run_dir.resolve()
    load_launch(run_dir)  # a bad launch.json is said here, not in a log nobody reads
    status = run_dir / "status.json"
    pid_file = run_dir / AGENT_PID
    log_path = run_dir / AGENT_LOG
    status.unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - runs in the child; exercised by the slow tests
        os.close(read_end)
        try:
            os.setsid()
            second = os.fork()
            if second == 0:
                os.close(write_end)
                _agent_main(run_dir, secrets or {}, env or {}, log_path, pid_file)
            os.write(write_end, str(second).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode().strip()
    os.waitpid(first, 0)
    if not text.isdigit():
        raise RunnerError(f"the agent could not be started in the background ({run_dir})")
    pid = int(text)
    deadline = time.monotonic() + confirm_s
    while time.monotonic() < deadline:
        if status.is_file():
            return pid
        if not _alive(pid):
            raise RunnerError(f"the agent exited at start: {_last_line(log_path)} ({log_path})")
        time.sleep(0.05)
    if _alive(pid):
        return pid  # up, still preparing (a long checkpoint pull): it says so in its log
    raise RunnerError(f"the agent exited at start: {_last_line(log_path)} ({log_path})")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass  # not our child (it is the grandchild): ask the kernel
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive; /proc says so on Linux.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def _last_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.startswith("error:")]
    found = errors[-1] if errors else next((ln for ln in reversed(lines) if ln), "no output")
    return found.removeprefix("error: ")


def _agent_main(  # pragma: no cover - runs in the detached grandchild
    run_dir: Path,
    secrets: Mapping[str, str],
    env: Mapping[str, str],
    log_path: Path,
    pid_file: Path,
) -> None:
    """The detached agent: stdio to the log, pid file, the run, the end policy; never returns."""
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin for its lifetime
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        os.umask(0o022)
        with contextlib.suppress(OSError):
            os.chdir(run_dir)
        import signal

        # Not in the SSH session any more; a stray hang-up must not end the run either.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        tmp = pid_file.with_name(f".{pid_file.name}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, pid_file)
        os.environ.update(env)

        def say(line: str) -> None:
            print(f"agent: {line}", flush=True)

        def on_event(event: Event) -> None:
            print(f"agent: {event.kind}: {event.message}", flush=True)

        try:
            result = start_run(run_dir, secrets=secrets, say=say, on_event=on_event)
            print(f"agent: {result.summary}", flush=True)
            code = result.exit_code
        except RunnerError as exc:
            print(f"error: {exc}", flush=True)
            code = exc.exit_code
            launch = read_launch(run_dir)
            if launch is not None and launch.backend == "vast":
                with contextlib.suppress(Exception):
                    _, spec = load_launch(run_dir)
                    end_after_run(run_dir, launch, spec, say=say, on_event=on_event)
    except BaseException:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
