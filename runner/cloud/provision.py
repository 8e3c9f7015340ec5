"""Rent a host that is verified, not merely "running": search, create, wait, probe, fail over.

:func:`rent` ranks the offers for a :class:`~runner.cloud.offers.Requirements`, then for each
offer in turn, up to ``max_tries``:

1. creates an instance labelled ``runner:<job or name>:<short id>``, runtype
   ``ssh_direc ssh_proxy``, ``cancel_unavail: true`` (an offer gone since the search is simply
   the next offer's turn), and writes it to the local registry at once;
2. waits for ``running``, reporting each new ``status_msg`` (the image pull's progress), and
   fails fast on a known bad state (exited, offline, stopped, frozen; unknown for longer than
   a grace period) or message ("failed to pull image", "no space left on device", ...);
3. runs the probe over SSH (one round trip; retried while sshd is not up yet, for a bounded
   time) and judges it against the requirements.

Invariants:

- A host that fails anything is destroyed before the next offer is tried; its machine is
  remembered as bad (skipped by later searches) unless the failure was the image's own
  (manifest unknown, unauthorized: no host would do better, so two such failures end the rent).
- :func:`rent` returns a verified host or raises; it never leaves an instance it created
  billing behind it: every error path destroys, ``KeyboardInterrupt`` included (an interrupt
  during the create call itself is cleaned up by the instance's unique label). A volume
  created with a failed instance is deleted with it.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from runner.cloud.offers import Ranking, Requirements, search
from runner.cloud.probe import ProbeError, ProbeReport, Verdict, check, run_probe
from runner.cloud.registry import Registry
from runner.cloud.ssh import (
    Ssh,
    SshAuthError,
    SshError,
    SshTarget,
    SshUnreachableError,
    default_key_path,
    ensure_key,
)
from runner.cloud.vast import (
    RUNTYPE_SSH_DIRECT,
    ApiError,
    CloudError,
    Instance,
    NotFoundError,
    Offer,
    OfferUnavailableError,
    VastClient,
    Volume,
    VolumeAttach,
)

__all__ = [
    "DEFAULT_IMAGE",
    "FAIL_MESSAGES",
    "FAIL_STATUSES",
    "LABEL_PREFIX",
    "Attempt",
    "RentEvent",
    "RentFailedError",
    "Rental",
    "Timeouts",
    "VolumeChoice",
    "destroy",
    "ensure_account_key",
    "is_runner_label",
    "make_label",
    "rent",
    "sigterm_as_interrupt",
]

#: Every instance runner creates carries a label starting with this; runner destroys no other.
LABEL_PREFIX = "runner:"
#: A PyTorch image with python3 (the probe needs one); jobs name their own.
DEFAULT_IMAGE = "pytorch/pytorch:latest"
#: States that end a start-up (``unknown`` only after :attr:`Timeouts.unknown_s`).
FAIL_STATUSES = frozenset({"exited", "offline", "stopped", "frozen"})
#: ``status_msg`` fragments (lower case) that mean the start-up has failed.
FAIL_MESSAGES = (
    "error response from daemon",
    "failed to pull image",
    "no space left on device",
    "manifest unknown",
    "unauthorized",
    "oci runtime create failed",
)
#: Fragments that blame the image (or its registry login), not the host.
_IMAGE_FAULTS = ("manifest unknown", "unauthorized", "not found", "denied", "repository does not")


@dataclass(frozen=True)
class Timeouts:
    """How long each phase may take (seconds), and how often the instance is polled."""

    boot_s: float = 900.0
    """Create to ``running``, image pull included (a large image on a slow host takes minutes)."""
    unknown_s: float = 60.0
    """How long ``unknown`` (no heartbeat from the host) is tolerated while starting."""
    ssh_s: float = 120.0
    """``running`` to a probe that answered (sshd and key install may lag)."""
    probe_s: float = 90.0
    """One probe run."""
    poll_first_s: float = 0.5
    """Poll interval at first: an instance with a cached image is up in seconds."""
    poll_fast_for_s: float = 15.0
    """How long polling stays at the first interval before backing off."""
    poll_max_s: float = 10.0
    """The longest poll interval (vast.ai's own advice)."""


@dataclass(frozen=True)
class RentEvent:
    """One step of a rental, for progress output."""

    kind: str
    """search, offer, create, status, ssh, probe, verified, failed, destroy, skip, warn."""
    message: str
    instance_id: int | None = None
    offer_id: int | None = None


@dataclass(frozen=True)
class Attempt:
    """One offer tried."""

    offer: Offer
    instance_id: int | None
    outcome: str
    """verified, offer_gone, create_failed, boot_failed, ssh_failed, probe_failed, image_failed."""
    reason: str
    marked_bad: bool
    elapsed_s: float
    phases: Mapping[str, float] = field(default_factory=dict)
    """Seconds per phase: create, boot (to running), probe (SSH wait + probe), destroy."""


@dataclass(frozen=True)
class VolumeChoice:
    """A volume for the rental: link ``volume_id``, or create ``create_gb`` with the instance."""

    mount_path: str = "/storage"
    volume_id: int | None = None
    create_gb: float | None = None
    name: str | None = None


@dataclass(frozen=True)
class Rental:
    """A verified host."""

    instance: Instance
    offer: Offer
    label: str
    target: SshTarget
    report: ProbeReport
    verdict: Verdict
    attempts: tuple[Attempt, ...]
    ranking: Ranking
    ssh_command: str
    volume_id: int | None
    elapsed_s: float


class RentFailedError(CloudError):
    """No offer gave a verified host; ``attempts`` says what each did."""

    def __init__(self, message: str, attempts: tuple[Attempt, ...] = ()) -> None:
        super().__init__(message)
        self.attempts = attempts


class _HostFailed(Exception):
    def __init__(self, outcome: str, reason: str, *, bad: bool = True) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.bad = bad


def make_label(name: str) -> str:
    """``runner:<name>:<6 hex>``: unique per rental, recognisable as runner's."""
    return f"{LABEL_PREFIX}{name}:{secrets.token_hex(3)}"


def is_runner_label(label: str | None) -> bool:
    return bool(label) and str(label).startswith(LABEL_PREFIX)


def _key_body(text: str) -> str:
    return " ".join(text.split()[:2])


def ensure_account_key(client: VastClient, public_key: str) -> None:
    """Add ``public_key`` to the account unless it is there (new instances get account keys)."""
    body = _key_body(public_key)
    if any(_key_body(k.public_key) == body for k in client.list_ssh_keys()):
        return
    client.add_ssh_key(public_key)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """A ``kill`` (SIGTERM) while renting raises :class:`KeyboardInterrupt`, so it runs the same
    clean-up as Ctrl-C: nothing runner created is left billing. Off the main thread, signals
    are left alone."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def destroy(client: VastClient, instance_id: int, *, tries: int = 3, pause_s: float = 1.0) -> None:
    """Destroy an instance; already gone is fine. Raises :class:`CloudError` saying it may still
    bill when every try failed."""
    last: CloudError | None = None
    for i in range(tries):
        try:
            client.destroy_instance(instance_id)
            return
        except NotFoundError:
            return
        except CloudError as exc:
            last = exc
            if i + 1 < tries:
                time.sleep(pause_s)
    raise CloudError(
        f"instance {instance_id} may still be billing: destroying it failed ({last}); "
        f"run `runner down {instance_id}`"
    )


def rent(
    client: VastClient,
    req: Requirements,
    *,
    image: str = DEFAULT_IMAGE,
    job: str | None = None,
    name: str | None = None,
    registry: Registry | None = None,
    ssh: Ssh | None = None,
    ssh_key: Path | None = None,
    volume: VolumeChoice | None = None,
    max_tries: int = 5,
    timeouts: Timeouts | None = None,
    progress: Callable[[RentEvent], None] | None = None,
    env: Mapping[str, str] | None = None,
    onstart: str | None = None,
    hub_url: str | None = None,
) -> Rental:
    """Rent, verify and return a host for ``req``; see the module docstring.

    ``max_tries`` bounds the instances created (offers gone at create do not count, up to
    four times as many offers in all). ``ssh_key`` is the private key to log in with
    (default: runner's own, made on first use); its public half is added to the account if
    missing. Raises :class:`NoOffersError` when no
    offer matches, :class:`RentFailedError` when none verified, and the client's
    :class:`CloudError` for API failures; in every case nothing runner created is left billing.
    """
    started = time.monotonic()
    times = timeouts or Timeouts()
    registry = registry or Registry()
    say = progress or (lambda event: None)
    ssh = ssh or Ssh(ssh_key or default_key_path())
    public = ensure_key(ssh.key, create=True)
    volume_gb: float | None = None
    if volume is not None:
        req, volume_gb = _volume_requirements(client, req, volume)
    ensure_account_key(client, public)

    bad = {m: b.reason for m, b in registry.bad_machines().items()}
    ranking = search(client, req, bad_machines=bad)
    best = ranking.ranked[0]
    say(RentEvent("search", f"{len(ranking.ranked)} offers; best {best.offer.describe()}"))

    attempts: list[Attempt] = []
    failed_machines: set[int] = set()
    image_faults = 0
    for ranked in ranking.ranked:
        # A try is an instance created; offers gone since the search cost nothing, but a stale
        # search must not run on for ever either.
        created = sum(1 for a in attempts if a.instance_id is not None)
        if created >= max_tries or len(attempts) >= 4 * max_tries:
            break
        offer = ranked.offer
        if offer.machine_id in failed_machines:
            continue
        if volume is not None and volume.create_gb and offer.avail_vol_ask_id is None:
            say(RentEvent("skip", f"{offer.describe()}: no volume offer on its machine"))
            continue
        attempt, rental = _try_offer(
            client,
            req,
            offer,
            ranking=ranking,
            image=image,
            label=make_label(job or name or "rent"),
            job=job,
            registry=registry,
            ssh=ssh,
            volume=volume,
            volume_gb=volume_gb,
            times=times,
            say=say,
            env=env,
            onstart=onstart,
            hub_url=hub_url,
            earlier=tuple(attempts),
            started=started,
        )
        attempts.append(attempt)
        if rental is not None:
            return rental
        if attempt.outcome != "offer_gone":
            failed_machines.add(offer.machine_id)
        if attempt.outcome == "image_failed":
            image_faults += 1
            if image_faults >= 2:
                raise RentFailedError(
                    f"the image {image} failed to start on two hosts ({attempt.reason}); check "
                    "its name, tag and registry login",
                    tuple(attempts),
                )
    raise RentFailedError(_failure_line(attempts, len(ranking.ranked)), tuple(attempts))


def _failure_line(attempts: list[Attempt], offered: int) -> str:
    if not attempts:
        return f"no offer could be tried ({offered} found)"
    parts = [f"offer {a.offer.id}: {a.reason}" for a in attempts[-3:]]
    more = f"{len(attempts) - 3} earlier; " if len(attempts) > 3 else ""
    return (
        f"no verified host after {len(attempts)} tries ({more}{'; '.join(parts)}); "
        "see `runner offers --explain`, or widen the filters"
    )


def _volume_requirements(
    client: VastClient, req: Requirements, volume: VolumeChoice
) -> tuple[Requirements, float | None]:
    if volume.volume_id is not None and volume.create_gb is not None:
        raise CloudError("--storage and --create-storage: choose one")
    if volume.volume_id is None:
        return req, volume.create_gb
    found: Volume | None = next(
        (v for v in client.list_volumes() if v.id == volume.volume_id), None
    )
    if found is None:
        raise CloudError(
            f"no volume {volume.volume_id} on this account; `runner storage list` shows them"
        )
    if found.instances:
        raise CloudError(
            f"volume {found.id} is in use by instance {found.instances[0]}; a local volume "
            "attaches to one instance at a time"
        )
    if found.machine_id is None:
        raise CloudError(f"vast.ai does not say which machine volume {found.id} lives on")
    return replace(req, machine_id=found.machine_id), found.size_gb


def _try_offer(
    client: VastClient,
    req: Requirements,
    offer: Offer,
    *,
    ranking: Ranking,
    image: str,
    label: str,
    job: str | None,
    registry: Registry,
    ssh: Ssh,
    volume: VolumeChoice | None,
    volume_gb: float | None,
    times: Timeouts,
    say: Callable[[RentEvent], None],
    env: Mapping[str, str] | None,
    onstart: str | None,
    hub_url: str | None,
    earlier: tuple[Attempt, ...],
    started: float,
) -> tuple[Attempt, Rental | None]:
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    attach = _attach(volume, offer)
    say(RentEvent("offer", f"renting {offer.describe()}", offer_id=offer.id))
    iid: int | None = None
    target: SshTarget | None = None
    t2: float | None = None  # when the SSH wait + probe began
    inst: Instance | None = None
    # One try from the create call on: an interrupt can land anywhere, even between the
    # create's answer and the registry write, and must still destroy what was created.
    try:
        try:
            iid = client.create_instance(
                offer.id,
                image=image,
                disk_gb=req.disk_gb,
                label=label,
                runtype=RUNTYPE_SSH_DIRECT,
                env=env,
                onstart=onstart,
                volume=attach,
            )
        except OfferUnavailableError:
            say(RentEvent("skip", f"offer {offer.id} is gone since the search", offer_id=offer.id))
            return _attempt(offer, None, "offer_gone", "gone since the search", False, t0), None
        except ApiError as exc:
            say(RentEvent("skip", str(exc), offer_id=offer.id))
            return _attempt(offer, None, "create_failed", str(exc), False, t0), None
        phases["create"] = time.monotonic() - t0
        registry.add_instance(
            iid,
            label=label,
            job=job,
            offer_id=offer.id,
            machine_id=offer.machine_id,
            gpu_name=offer.gpu_name,
            num_gpus=offer.num_gpus,
            dph_total=offer.dph_total,
            disk_gb=req.disk_gb,
            image=image,
        )
        say(RentEvent("create", f"instance {iid} created ({label})", iid, offer.id))
        t1 = time.monotonic()
        inst = _wait_running(client, iid, times, say)
        phases["boot"] = time.monotonic() - t1
        t2 = time.monotonic()
        vol_path = (
            (volume.mount_path, volume_gb) if volume is not None and volume_gb is not None else None
        )
        paths = [req.checkpoint_path] + ([vol_path[0]] if vol_path else [])
        target, report, inst = _probe_when_up(
            client, ssh, inst, paths=paths, hub_url=hub_url, times=times, say=say
        )
        phases["probe"] = time.monotonic() - t2
        verdict = check(report, req, offer=offer, volume=vol_path)
        for note in verdict.notes:
            say(RentEvent("probe", f"note: {note}", iid, offer.id))
        if not verdict.ok:
            for line in verdict.failures:
                say(RentEvent("probe", f"failed: {line}", iid, offer.id))
            raise _HostFailed("probe_failed", verdict.failures[0])
    except _HostFailed as fail:
        assert iid is not None  # raised only once the instance exists
        reason = fail.reason
        say(RentEvent("failed", f"instance {iid}: {reason}", iid, offer.id))
        t3 = time.monotonic()
        if t2 is not None and "probe" not in phases:
            phases["probe"] = t3 - t2
        _discard(client, registry, ssh, iid, inst, target, attach, reason, say)
        phases["destroy"] = time.monotonic() - t3
        if fail.bad:
            registry.mark_bad(offer.machine_id, reason, instance_id=iid)
            say(RentEvent("destroy", f"machine {offer.machine_id} marked bad", iid, offer.id))
        return _attempt(offer, iid, fail.outcome, reason, fail.bad, t0, phases), None
    except BaseException as exc:
        # Anything else (an API error mid-wait, Ctrl-C): the instance must not outlive us.
        if iid is None:
            # Interrupted (or the answer lost) mid-create: an instance may exist all the same;
            # its label is unique, so find it by that and destroy it.
            _destroy_by_label(client, label)
            raise
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc}"
        quiet = _quiet(say)
        quiet(RentEvent("failed", f"instance {iid}: {reason}; destroying it", iid, offer.id))
        _discard(client, registry, ssh, iid, inst, target, attach, reason, quiet)
        raise
    registry.set_status(iid, "verified", ssh=(target.host, target.port))
    attempt = _attempt(offer, iid, "verified", verdict.summary, False, t0, phases)
    say(RentEvent("verified", f"instance {iid} verified: {verdict.summary}", iid, offer.id))
    rental = Rental(
        instance=inst,
        offer=offer,
        label=label,
        target=target,
        report=report,
        verdict=verdict,
        attempts=(*earlier, attempt),
        ranking=ranking,
        ssh_command=ssh.command_line(target),
        volume_id=inst.volume_id,
        elapsed_s=time.monotonic() - started,
    )
    return attempt, rental


def _quiet(say: Callable[[RentEvent], None]) -> Callable[[RentEvent], None]:
    """``say`` for clean-up paths: a failing progress callback (a second Ctrl-C while printing)
    must not stop the destroy that follows."""

    def call(event: RentEvent) -> None:
        with contextlib.suppress(BaseException):
            say(event)

    return call


def _attempt(
    offer: Offer,
    iid: int | None,
    outcome: str,
    reason: str,
    bad: bool,
    t0: float,
    phases: Mapping[str, float] | None = None,
) -> Attempt:
    return Attempt(offer, iid, outcome, reason, bad, time.monotonic() - t0, dict(phases or {}))


def _attach(volume: VolumeChoice | None, offer: Offer) -> VolumeAttach | None:
    if volume is None:
        return None
    if volume.volume_id is not None:
        return VolumeAttach(volume.mount_path, volume_id=volume.volume_id, name=volume.name)
    return VolumeAttach(
        volume.mount_path,
        create_ask_id=offer.avail_vol_ask_id,
        size_gb=volume.create_gb,
        name=volume.name,
    )


def _wait_running(
    client: VastClient, iid: int, times: Timeouts, say: Callable[[RentEvent], None]
) -> Instance:
    start = time.monotonic()
    seen: tuple[str | None, str | None] | None = None
    unknown_since: float | None = None
    delay = times.poll_first_s
    while True:
        inst = client.show_instance(iid)
        now = time.monotonic()
        if inst is None:
            raise _HostFailed(
                "boot_failed", "the instance vanished from the account while starting"
            )
        status, msg = inst.actual_status, (inst.status_msg or "").strip()
        if (status, msg) != seen:
            seen = (status, msg)
            say(
                RentEvent(
                    "status",
                    f"instance {iid}: {status or 'provisioning'}" + (f": {msg}" if msg else ""),
                    iid,
                )
            )
        if status == "running":
            return inst
        low = msg.lower()
        if any(marker in low for marker in FAIL_MESSAGES):
            image_fault = any(marker in low for marker in _IMAGE_FAULTS)
            outcome = "image_failed" if image_fault else "boot_failed"
            raise _HostFailed(outcome, f"{status or 'starting'}: {msg}", bad=not image_fault)
        if status in FAIL_STATUSES:
            raise _HostFailed(
                "boot_failed", f"went {status} while starting" + (f" ({msg})" if msg else "")
            )
        if status == "unknown":
            unknown_since = unknown_since if unknown_since is not None else now
            if now - unknown_since > times.unknown_s:
                raise _HostFailed(
                    "boot_failed", f"status unknown (no heartbeat) for {times.unknown_s:g} s"
                )
        else:
            unknown_since = None
        if now - start > times.boot_s:
            last = f"{status or 'provisioning'}" + (f": {msg}" if msg else "")
            raise _HostFailed("boot_failed", f"not running after {times.boot_s:g} s ({last})")
        time.sleep(delay)
        if now - start >= times.poll_fast_for_s:
            delay = min(times.poll_max_s, delay * 1.5)


def _probe_when_up(
    client: VastClient,
    ssh: Ssh,
    inst: Instance,
    *,
    paths: list[str],
    hub_url: str | None,
    times: Timeouts,
    say: Callable[[RentEvent], None],
) -> tuple[SshTarget, ProbeReport, Instance]:
    deadline = time.monotonic() + times.ssh_s
    last_error: SshError | None = None
    last_check = time.monotonic()
    tries = 0
    pause = 0.25
    while True:
        endpoints = inst.ssh_endpoints()
        if endpoints:
            host, port = endpoints[tries % len(endpoints)]
            target = SshTarget(host, port, name=f"vast-{inst.id}")
            if tries == 0:
                say(RentEvent("ssh", f"probing {target}", inst.id))
            try:
                report = run_probe(
                    ssh, target, paths=paths, hub_url=hub_url, timeout_s=times.probe_s
                )
                return target, report, inst
            except (SshUnreachableError, SshAuthError) as exc:
                last_error = exc  # sshd still starting, or the key not installed yet
            except SshError as exc:
                raise _HostFailed("ssh_failed", str(exc)) from None
            except ProbeError as exc:
                bad = "no python3" not in str(exc)
                raise _HostFailed(
                    "probe_failed" if bad else "image_failed", str(exc), bad=bad
                ) from None
        tries += 1
        now = time.monotonic()
        if now > deadline:
            why = f" ({last_error})" if last_error else " (no SSH endpoint reported)"
            raise _HostFailed(
                "ssh_failed", f"SSH did not answer within {times.ssh_s:g} s of running{why}"
            )
        if now - last_check > 5.0 or not endpoints:
            last_check = now
            fresh = client.show_instance(inst.id)
            if fresh is None or fresh.actual_status != "running":
                state = fresh.actual_status if fresh is not None else "gone"
                raise _HostFailed("boot_failed", f"went {state} while waiting for SSH")
            inst = fresh
        time.sleep(pause)
        pause = min(2.0, pause * 1.5)


def _discard(
    client: VastClient,
    registry: Registry,
    ssh: Ssh,
    iid: int,
    inst: Instance | None,
    target: SshTarget | None,
    attach: VolumeAttach | None,
    reason: str,
    say: Callable[[RentEvent], None],
) -> None:
    """Destroy a failed instance (and a volume created with it); record it; forget its key.

    Every action comes before any progress message, so a callback that raises cannot leave
    part of the clean-up undone.
    """
    volume_id = inst.volume_id if inst is not None else None
    made_volume = attach is not None and attach.create_ask_id is not None
    if made_volume and volume_id is None:
        with contextlib.suppress(CloudError):
            fresh = client.show_instance(iid)
            volume_id = fresh.volume_id if fresh is not None else None
    destroy(client, iid)
    with contextlib.suppress(CloudError):
        registry.set_status(iid, "destroyed", reason=reason)
    ssh.forget(target or SshTarget("-", 0, name=f"vast-{iid}"))
    events = [RentEvent("destroy", f"instance {iid} destroyed", iid)]
    if made_volume and volume_id is not None:
        events.append(_delete_volume(client, volume_id))
    for event in events:
        say(event)


def _delete_volume(client: VastClient, volume_id: int) -> RentEvent:
    last: CloudError | None = None
    for i in range(5):
        try:
            client.delete_volume(volume_id)
            return RentEvent("destroy", f"volume {volume_id} (made with it) deleted")
        except NotFoundError:
            return RentEvent("destroy", f"volume {volume_id} was gone already")
        except CloudError as exc:  # "in use" just after the destroy: give vast.ai a moment
            last = exc
            time.sleep(1.0 + i)
    return RentEvent(
        "warn",
        f"volume {volume_id} may still bill: {last}; `runner storage delete {volume_id}`",
    )


def _destroy_by_label(client: VastClient, label: str) -> None:
    with contextlib.suppress(Exception):
        for inst in client.list_instances():
            if inst.label == label:
                with contextlib.suppress(Exception):
                    destroy(client, inst.id)
