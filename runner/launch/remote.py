"""The rented path of ``runner launch JOB``: a verified vast.ai host, the run started on it.

:func:`launch_vast`:

1. rents a host for the job exactly as ``runner rent --job`` does
   (:func:`runner.cloud.provision.rent`: the job's image, a ``runner:<job>:...`` label, the
   registry, failover), or with ``--on ID`` takes that instance: it must be runner's (its
   label, or this machine's registry) and running, and it is verified again with the probe;
2. over runner's SSH: makes the run folder on the verified checkpoint disk
   (``/workspace/runs/RUN_ID``), writes ``launch.json`` there (the dataset path is the host's
   copy), brings a local or synthetic dataset with rsync (:mod:`runner.launch.sync`; a Hub
   dataset is fetched on the host by the agent, at its pinned revision, into
   ``/workspace/datasets/REPO@REV``, where later runs on that host find it);
3. starts the agent detached: ``runner agent start RUN_DIR --detach --secrets-stdin``, the
   secrets as JSON on SSH standard input (never argv, a file or ``/etc/environment``), with the
   non-secret environment :data:`runner.launch.hostside.FORWARDED_ENV` (the Hub endpoint, the
   vast.ai API base) that is set here; the command returns once the agent is up;
4. registers the run (instance, SSH endpoint, price, Hub repo, run folder, ``running``) and
   returns its record at once: the run goes on without this machine.

Every failure is one :class:`RunnerError` line. One that happens after runner rented the
host and before the agent started destroys that host (nothing is left billing); with ``--on``
the user's instance is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from runner.cloud.offers import Requirements
from runner.cloud.provision import (
    RentEvent,
    Timeouts,
    destroy,
    is_runner_label,
    rent,
    sigterm_as_interrupt,
)
from runner.cloud.registry import Registry
from runner.cloud.ssh import Ssh, SshError, SshTarget, default_key_path, ensure_key
from runner.cloud.vast import CloudError, VastClient
from runner.constants import ENV_IMAGE
from runner.errors import RunnerError
from runner.launch.hostside import FORWARDED_ENV
from runner.launch.runs import RunRecord, Runs
from runner.launch.sync import progress_printer, sync_folder
from runner.rundir import LAUNCH_FILE, Launch
from runner.spec import JobSpec

if TYPE_CHECKING:
    from runner.cloud.vast import Instance

__all__ = [
    "MIN_DISK_GB",
    "RUNNER_IMAGE",
    "RemoteLaunchError",
    "forwarded_env",
    "image_for",
    "launch_vast",
    "remote_paths",
    "rentable",
]

#: vast.ai refuses a create with less container disk than this.
MIN_DISK_GB = 8.0
#: The image of jobs that name none (their embedded profiles run runner's own trainer);
#: ``$RUNNER_IMAGE`` overrides it.
RUNNER_IMAGE = "runner/franka-embedded:latest"
#: Where ``runner`` may live on a host whose PATH (an SSH session's) does not have it.
_RUNNER_CANDIDATES = (
    "runner",
    "/usr/local/bin/runner",
    "/opt/runner/bin/runner",
    "/opt/venv/bin/runner",
    "/venv/bin/runner",
    "/opt/conda/bin/runner",
    "/root/.local/bin/runner",
)

Say = Callable[[str], None]


class RemoteLaunchError(RunnerError):
    """The run could not be started on the rented host."""


def image_for(spec: JobSpec, environ: Mapping[str, str] | None = None) -> str:
    """The image the host runs: the job's own, else runner's (``$RUNNER_IMAGE``)."""
    env = os.environ if environ is None else environ
    return spec.image or env.get(ENV_IMAGE, "").strip() or RUNNER_IMAGE


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The non-secret variables of :data:`FORWARDED_ENV` that are set here."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in FORWARDED_ENV if env.get(k, "").strip()}


def rentable(req: Requirements, job: str, say: Say) -> Requirements:
    """``req`` with at least the disk vast.ai rents (:data:`MIN_DISK_GB`), saying so when raised.

    Call it before pre-flight, so the disk projection is judged against what is rented.
    """
    if req.disk_gb >= MIN_DISK_GB:
        return req
    say(
        f"disk: {job} asks for {req.disk_gb:g} GB; vast.ai rents at least {MIN_DISK_GB:g} GB: "
        f"renting {MIN_DISK_GB:g} GB"
    )
    return replace(req, disk_gb=MIN_DISK_GB)


def remote_paths(checkpoint_path: str, run_id: str, dataset: Path | None) -> tuple[str, str | None]:
    """``(run folder, dataset folder)`` on the host, both on the verified checkpoint disk."""
    base = checkpoint_path.rstrip("/") or "/workspace"
    folder = f"{base}/runs/{run_id}"
    return folder, (f"{base}/datasets/{dataset.name}" if dataset is not None else None)


def launch_vast(
    launch: Launch,
    *,
    req: Requirements,
    dataset: Path | None,
    secrets: Mapping[str, str],
    runs: Runs,
    say: Say,
    client: VastClient | None = None,
    registry: Registry | None = None,
    ssh: Ssh | None = None,
    timeouts: Timeouts | None = None,
    timings: MutableMapping[str, float] | None = None,
) -> RunRecord:
    """Rent (or take ``launch.instance_id``), prepare, start the agent detached; see the module
    docstring. ``timings`` receives seconds per phase: rent (with ``rent_create``,
    ``rent_boot``, ``rent_probe`` of the verified try), prepare, dataset, agent."""
    spec = JobSpec.model_validate(dict(launch.spec))
    if client is None:
        from runner.cloud.vast import VastApi

        client = VastApi(notify=say)
    registry = registry or Registry(runs.path)
    ssh = ssh or Ssh(default_key_path())
    times: MutableMapping[str, float] = timings if timings is not None else {}
    req = rentable(req, spec.name, say)
    run_dir, host_dataset = remote_paths(req.checkpoint_path, launch.run_id, dataset)
    if dataset is None and spec.dataset.source == "hub" and spec.dataset.repo:
        # The agent fetches it there at the pinned revision (kept for later runs on the host).
        name = f"{spec.dataset.repo.replace('/', '--')}@{(spec.dataset.revision or '')[:12]}"
        host_dataset = f"{req.checkpoint_path.rstrip('/') or '/workspace'}/datasets/{name}"
    now = time.time()
    runs.add(
        RunRecord(
            run_id=launch.run_id,
            job=spec.name,
            profile=spec.profile,
            backend="vast",
            run_dir=run_dir,
            started=now,
            state="launching",
            updated=now,
            instance_id=launch.instance_id,
            hub_repo=spec.hub.repo if spec.hub else None,
            forced=",".join(launch.forced) or None,
        )
    )
    on = launch.instance_id
    iid: int | None = on
    agent_started = False
    try:
        with sigterm_as_interrupt():
            t0 = time.monotonic()
            if on is None:
                target, iid, dph, phases = _rent(client, req, spec, registry, ssh, timeouts, say)
                times.update({f"rent_{k}": v for k, v in phases.items()})
            else:
                target, dph = _take(client, on, req, registry, ssh, say)
            times["rent"] = time.monotonic() - t0
            runs.update(
                launch.run_id,
                instance_id=iid,
                ssh_host=target.host,
                ssh_port=target.port,
                dph_total=dph,
            )
            final = replace(
                launch,
                instance_id=iid,
                dph_total=dph,
                dataset=host_dataset,
                env={**launch.env, **forwarded_env()},
            )
            t1 = time.monotonic()
            _prepare(ssh, target, run_dir, final)
            times["prepare"] = time.monotonic() - t1
            if dataset is not None and host_dataset is not None:
                t2 = time.monotonic()
                say(f"dataset: {dataset} -> instance {iid}:{host_dataset}")
                result = sync_folder(
                    dataset, ssh, target, host_dataset, progress=progress_printer(say), say=say
                )
                times["dataset"] = time.monotonic() - t2
                rate = result.bytes_total / max(result.seconds, 1e-6) / 1e6
                took = f"{result.seconds:.1f} s ({rate:.1f} MB/s)"
                say(f"dataset: synced with {result.method} in {took}")
            elif spec.dataset.source == "hub":
                ds = spec.dataset
                say(f"dataset: {ds.repo}@{ds.revision}: the agent fetches it to {host_dataset}")
            t3 = time.monotonic()
            pid = _start_agent(ssh, target, run_dir, secrets, image_for(spec))
            agent_started = True
            times["agent"] = time.monotonic() - t3
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = "interrupted" if interrupted else str(exc)
        tail = ""
        if iid is not None and on is None and not agent_started:
            tail = _destroy_quietly(client, registry, ssh, iid, reason)
        with contextlib.suppress(Exception):
            runs.update(launch.run_id, state="failed", summary=f"launch failed: {reason}"[:500])
        if interrupted:
            raise RemoteLaunchError(f"interrupted{tail}", exit_code=130) from None
        if isinstance(exc, RunnerError) and tail:
            raise RemoteLaunchError(f"{exc}{tail}", exit_code=exc.exit_code) from None
        raise
    say(f"agent: running detached on instance {iid} (pid {pid}), run folder {run_dir}")
    return runs.update(launch.run_id, state="running")


def _rent(
    client: VastClient,
    req: Requirements,
    spec: JobSpec,
    registry: Registry,
    ssh: Ssh,
    timeouts: Timeouts | None,
    say: Say,
) -> tuple[SshTarget, int, float | None, Mapping[str, float]]:
    def progress(event: RentEvent) -> None:
        say(event.message)

    rental = rent(
        client,
        req,
        image=image_for(spec),
        job=spec.name,
        registry=registry,
        ssh=ssh,
        timeouts=timeouts,
        progress=progress,
        hub_url=os.environ.get("HF_ENDPOINT") or None,
    )
    phases = rental.attempts[-1].phases if rental.attempts else {}
    return rental.target, rental.instance.id, rental.offer.dph_total, phases


def _take(
    client: VastClient, iid: int, req: Requirements, registry: Registry, ssh: Ssh, say: Say
) -> tuple[SshTarget, float | None]:
    """``--on ID``: runner's own running instance, verified again."""
    from runner.cloud.probe import ProbeError, check, run_probe

    inst: Instance | None = client.show_instance(iid)
    if inst is None:
        raise CloudError(f"--on {iid}: no such instance on this vast.ai account; `runner ps`")
    record = registry.instance(iid)
    if not is_runner_label(inst.label) and record is None:
        raise CloudError(
            f"--on {iid}: instance {iid} ({inst.label or 'no label'}) was not rented by runner; "
            "runner launches only on its own instances (`runner rent`)"
        )
    if inst.actual_status != "running":
        raise CloudError(
            f"--on {iid}: instance {iid} is {inst.actual_status or 'starting'}, not running; "
            "wait for it, or launch without --on to rent a new one"
        )
    endpoints = inst.ssh_endpoints()
    if not endpoints:
        raise CloudError(f"--on {iid}: vast.ai reports no SSH endpoint for instance {iid}")
    host, port = endpoints[0]
    target = SshTarget(host, port, name=f"vast-{iid}")
    ensure_key(ssh.key, create=True)
    say(f"instance {iid}: verifying {target}")
    try:
        report = run_probe(ssh, target, paths=[req.checkpoint_path])
    except (SshError, ProbeError) as exc:
        raise CloudError(f"--on {iid}: the host did not pass the probe: {exc}") from None
    verdict = check(report, req)
    if not verdict.ok:
        raise CloudError(f"--on {iid}: the host does not fit the job: {verdict.failures[0]}")
    say(f"instance {iid} verified: {verdict.summary}")
    dph = inst.dph_total if inst.dph_total is not None else (record.dph_total if record else None)
    return target, dph


def _prepare(ssh: Ssh, target: SshTarget, run_dir: str, launch: Launch) -> None:
    """The run folder on the host, with ``launch.json`` written atomically."""
    q = shlex.quote
    final = f"{run_dir}/{LAUNCH_FILE}"
    tmp = f"{run_dir}/.{LAUNCH_FILE}.tmp"
    line = f"mkdir -p {q(run_dir)} && cat > {q(tmp)} && mv -f {q(tmp)} {q(final)}"
    body = json.dumps(launch.to_dict(), indent=1, default=str)
    try:
        done = ssh.run(target, line, input=body, timeout_s=60)
    except SshError as exc:
        raise RemoteLaunchError(f"cannot prepare the run folder on the host: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode
        raise RemoteLaunchError(f"cannot write {final} on the host: {why}")


def _start_agent(
    ssh: Ssh, target: SshTarget, run_dir: str, secrets: Mapping[str, str], image: str
) -> int:
    """``runner agent start RUN_DIR --detach --secrets-stdin`` on the host; the agent's pid."""
    q = shlex.quote
    candidates = " ".join(q(c) for c in _RUNNER_CANDIDATES)
    line = (
        f"cd {q(run_dir)} && for c in {candidates}; do "
        f'if command -v "$c" >/dev/null 2>&1; then '
        f'exec "$c" agent start {q(run_dir)} --detach --secrets-stdin; fi; done; '
        f"echo 'error: runner is not installed on the host (image {image}); use an image "
        "with runner in it' >&2; exit 127"
    )
    payload = json.dumps({"secrets": dict(secrets), "env": forwarded_env()})
    try:
        done = ssh.run(target, line, input=payload, timeout_s=180)
    except SshError as exc:
        raise RemoteLaunchError(f"cannot start the agent on the host: {exc}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        why = (errors or lines or [f"exit code {done.returncode}"])[-1].removeprefix("error: ")
        raise RemoteLaunchError(f"the agent did not start on the host: {why}")
    pid = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not pid.isdigit():
        raise RemoteLaunchError(f"the agent did not say its pid on the host ({done.stdout!r:.80})")
    return int(pid)


def _destroy_quietly(
    client: VastClient, registry: Registry, ssh: Ssh, iid: int, reason: str
) -> str:
    """Destroy the instance this launch rented; the words to add to the error line."""
    try:
        destroy(client, iid)
    except CloudError as exc:
        return f"; {exc}"
    with contextlib.suppress(CloudError):
        registry.set_status(iid, "destroyed", reason=f"launch failed: {reason}"[:300])
    ssh.forget(SshTarget("-", 0, name=f"vast-{iid}"))
    return f"; instance {iid} destroyed (nothing left billing)"
