"""Pre-flight: everything ``runner launch`` checks before anything is started or paid for.

:func:`check` looks at one resolved job for one backend and returns a :class:`Report`:
one :class:`Item` per question, each ``ok``, ``warn``, ``fail`` or ``skip`` with the
numbers it is based on and, where it is not ok, what to change. It never raises for what
it finds; the CLI shows the items as a checklist and refuses a failing one unless
``--force``. Nothing here starts, pulls, rents or writes anything.

Items, in the order shown:

``dataset``
    A local (or synthesised) folder fits the job's layout
    (:func:`runner.launch.local.check_dataset`); a Hub dataset's pinned revision exists
    (the Hub unreachable: warn; repo or revision missing: fail).
``disk``
    The projection against the disk it lands on. On a rented host (``vast``) everything
    goes on the disk rented: dataset + image (when the local engine knows its size) +
    checkpoints + margin. Here (``local``, ``docker``) the dataset and image are already
    on this machine and are read in place, so only what the run writes counts: checkpoints
    + margin, against the free space of the run folder's nearest existing parent.
    Checkpoints count ``keep + 1`` (the newest ``keep`` plus the one being written before
    rotation deletes the oldest). The margin is 10 % of the rest, at least
    :data:`MARGIN_RENTED_GB` on a rented disk (its OS, pip caches and logs share it) and
    :data:`MARGIN_LOCAL_GB` here (logs and stack dumps only).
``ram``
    ``resources.ram_gb``, raised to :data:`RAM_PER_WORKER_GB` per DataLoader worker when the
    command line or environment names ``num_workers`` (the users' measured ~2.5 GB per
    worker), against this machine's RAM (psutil): less in total fails, less available
    warns. A rented host: skipped, the rent filters ask for the RAM.
``gpu``, ``gpu_busy``
    The GPUs picked here (NVML through :func:`runner.sampling.nvml.open_nvml`, so
    ``RUNNER_FAKE_NVML`` works): their memory against ``resources.min_gpu_memory_gb``, and
    whether other processes already hold a large share of their memory
    (:data:`BUSY_PERCENT`) or utilisation, or leave less free than the job needs.
    CPU-only jobs and rented hosts: skipped.
``secrets``
    Every secret the job names is set in this environment (names only, never values):
    a required one missing fails, an optional one warns with what is lost.
``image``
    ``docker``: the local engine has the job's image (no engine: fail, with what to start).
    ``vast``: the local engine or the image's registry knows it; unknown is a warning,
    since the host pulls it. ``local``: no image, unless the job only runs in one (fail).
``user_site``
    The seeds' shadowed torch: here, user-site packages (``site.getusersitepackages()``)
    that shadow the environment's own, with neither the job's env nor this shell setting
    ``PYTHONNOUSERSITE``, fail. In an image (``docker``, ``vast``): ok when the job's env or
    the image sets ``PYTHONNOUSERSITE=1``, else a warning.
``ignored.FIELD``
    One warning per job field the job's program never sees
    (:meth:`runner.programs.Program.ignored_fields`: e.g. ``checkpoints.every_minutes`` for
    ``lerobot-train``, which saves every ``--save_freq`` steps); none for generic jobs.
``fork``
    A warning when the job runs what its program's upstream lacks (``program.fork``) and
    names no fork to build (``program.repo``): :func:`runner.launch.images.fork_notice`.

These two only warn: nothing stops the launch; they say what the job asks for that its
program will not do.
"""

from __future__ import annotations

import math
import os
import queue
import re
import shutil
import site
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from runner.errors import RunnerError
from runner.launch.images import fork_notice
from runner.launch.local import DeviceChoice, check_dataset, runs_dir
from runner.programs import program_for
from runner.rundir import Backend
from runner.spec import JobSpec

__all__ = [
    "BUSY_PERCENT",
    "HUB_TIMEOUT_S",
    "MARGIN_FRACTION",
    "MARGIN_LOCAL_GB",
    "MARGIN_RENTED_GB",
    "RAM_PER_WORKER_GB",
    "SHADOWING",
    "Item",
    "Report",
    "Status",
    "check",
]

Status = Literal["ok", "warn", "fail", "skip"]

GB = 1e9
GIB = 1 << 30
#: Margin on top of the disk projection, as a fraction of it ...
MARGIN_FRACTION = 0.10
#: ... and at least this on a rented disk (OS, pip caches, logs share it), GB.
MARGIN_RENTED_GB = 5.0
#: ... and at least this on this machine (only the run folder's logs and stacks), GB.
MARGIN_LOCAL_GB = 1.0
#: RAM one DataLoader worker holds (the users' measurement on franka_cube_stack), GB.
RAM_PER_WORKER_GB = 2.5
#: Another process holding this share of a GPU's memory or utilisation makes it busy, %.
BUSY_PERCENT = 50.0
#: Below this share, another process on the GPU is only worth a warning, %.
SHARED_PERCENT = 10.0
#: Packages whose user-site copy broke the users' runs (a user-site torch shadowed conda's).
SHADOWING = frozenset(
    {"torch", "torchvision", "torchaudio", "numpy", "jax", "jaxlib", "transformers", "lerobot"}
)
#: Longest wait for one Hub answer before the dataset item says the Hub did not answer, s.
HUB_TIMEOUT_S = 20.0
_DOCKER_TIMEOUT_S = 10
_T = TypeVar("_T")

_WORKERS_ITEM = re.compile(r"(?:^|[.\-+~])num[_-]workers=(\d+)$")
_WORKERS_FLAG = re.compile(r"^--?(?:[\w.]+\.)?num[_-]workers$")
_DIST = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._]*?)-[^-]+\.(?:dist-info|egg-info)$")


@dataclass(frozen=True)
class Item:
    """One pre-flight question and its answer."""

    #: Short id: ``dataset``, ``disk``, ``ram``, ``gpu``, ``gpu_busy``, ``secrets``, ``image``,
    #: ``user_site``, ``ignored.FIELD``, ``fork``; what ``--force`` records.
    key: str
    status: Status
    #: A few words for the checklist ("disk", "GPU memory").
    title: str
    #: What was found, with the numbers the verdict rests on.
    detail: str
    #: What to change, one clause; empty when nothing needs to change.
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        """The fields as JSON-ready values."""
        return {
            "key": self.key,
            "status": self.status,
            "title": self.title,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Report:
    """Every item checked for one job on one backend, in checklist order."""

    job: str
    backend: Backend
    items: tuple[Item, ...]

    @property
    def failed(self) -> tuple[Item, ...]:
        """The items whose status is ``fail``: launching would waste time or money."""
        return tuple(i for i in self.items if i.status == "fail")

    @property
    def warned(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if i.status == "warn")

    def item(self, key: str) -> Item:
        """The item called ``key``; ``KeyError`` when it was not checked."""
        for found in self.items:
            if found.key == key:
                return found
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "backend": self.backend,
            "items": [i.to_dict() for i in self.items],
        }


def check(
    spec: JobSpec,
    *,
    backend: Backend,
    dataset: Path | None = None,
    run_dir: Path | None = None,
    disk_gb: float | None = None,
    device: DeviceChoice | None = None,
    environ: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    job_env: Mapping[str, str] | None = None,
) -> Report:
    """Check ``spec`` before it is launched on ``backend``.

    Args:
        dataset: the dataset folder the job will read (the CLI resolves or synthesises it
            first); ``None`` for a Hub dataset, or the job's own ``dataset.path``.
        run_dir: the run folder (``local``, ``docker``); default ``runs/``.
        disk_gb: the disk to rent (``vast``); default the job's ``resources.disk_gb``.
        device: what :func:`runner.launch.local.pick_device` chose (``local``); picked here
            when ``None`` (``local``, ``docker``).
        environ: the user's environment (secrets, ``PYTHONNOUSERSITE``, ``DOCKER_HOST``,
            ``RUNNER_FAKE_NVML``); default ``os.environ``.
        argv: the command the job will run, overrides applied; default the job's command
            with its default overrides. Read for ``num_workers``.
        job_env: environment the overrides add (env-style jobs) on top of the job's ``env``;
            default the job's default overrides.

    Never raises for what it finds: every problem is an item.
    """
    ctx = _Context(
        spec=spec,
        backend=backend,
        dataset=dataset,
        run_dir=run_dir,
        disk_gb=disk_gb,
        device=device,
        environ=os.environ if environ is None else environ,
        argv=argv,
        job_env=job_env,
    )
    items = [
        _dataset(ctx),
        _disk(ctx),
        _ram(ctx),
        *_gpus(ctx),
        _secrets(ctx),
        _image(ctx),
        _user_site(ctx),
        *_ignored_fields(ctx),
        *_fork(ctx),
    ]
    return Report(spec.name, backend, tuple(items))


# --------------------------------------------------------------------------- context


@dataclass(frozen=True)
class _ImageLookup:
    """What the local Docker engine says about one image."""

    #: Why the engine could not be asked (unreachable, SDK missing); None when it answered.
    engine_error: str | None = None
    found: bool = False
    size_bytes: int | None = None
    env: Mapping[str, str] | None = None
    image_id: str | None = None
    client: Any = None


class _Context:
    def __init__(
        self,
        *,
        spec: JobSpec,
        backend: Backend,
        dataset: Path | None,
        run_dir: Path | None,
        disk_gb: float | None,
        device: DeviceChoice | None,
        environ: Mapping[str, str],
        argv: Sequence[str] | None,
        job_env: Mapping[str, str] | None,
    ) -> None:
        self.spec = spec
        self.backend = backend
        self.dataset = dataset
        self.run_dir = run_dir
        self.disk_gb = disk_gb
        self.device = device
        self.environ = environ
        default_argv, default_env = spec.apply_overrides([])
        self.argv = list(argv) if argv is not None else default_argv
        #: The environment the training process gets from the job (before the user's own).
        self.job_env = {**spec.env, **(default_env if job_env is None else job_env)}

    @property
    def rented(self) -> bool:
        return self.backend == "vast"

    @cached_property
    def dataset_path(self) -> Path | None:
        """The folder the job reads here, when it reads one from this machine."""
        if self.dataset is not None:
            return self.dataset
        ds = self.spec.dataset
        if ds.source == "local" and ds.path:
            return Path(ds.path)
        return None

    @cached_property
    def dataset_bytes(self) -> int | None:
        """The apparent size of the local dataset folder (what a copy writes), if there is one."""
        path = self.dataset_path
        return _tree_bytes(path) if path is not None and path.is_dir() else None

    @cached_property
    def image(self) -> _ImageLookup:
        ref = self.spec.image
        assert ref is not None
        return _lookup_image(ref, self.environ)


# --------------------------------------------------------------------------- dataset


def _dataset(ctx: _Context) -> Item:
    title = "dataset"
    ds = ctx.spec.dataset
    path = ctx.dataset_path
    if path is not None:
        try:
            check_dataset(ds.layout, path)
        except RunnerError as err:
            fix = "pass --data PATH to a valid copy"
            return Item("dataset", "fail", title, str(err).split("; pass --data")[0], fix)
        what = f"{ds.layout} dataset" if ds.layout else "dataset folder"
        checked = "" if ds.layout == "franka" else f" (no check for layout {ds.layout or 'none'})"
        # Sized only where it is copied: walking a big tree here would only decorate the line.
        where = (
            f"{_gb(ctx.dataset_bytes / GB)} GB, synced to the host"
            if ctx.rented and ctx.dataset_bytes is not None
            else "read in place"
        )
        return Item("dataset", "ok", title, f"{what} {path}{checked}, {where}")
    if ds.source == "hub":
        if not ctx.rented:
            return Item(
                "dataset",
                "fail",
                title,
                f"{ds.repo}@{ds.revision} is on the Hub, which a run here does not fetch",
                "pass --data PATH to a local copy",
            )
        return _hub_dataset(ctx)
    if ds.source == "synthetic":
        return Item(
            "dataset", "skip", title, "synthetic: made by `runner launch` before pre-flight"
        )
    if ds.path:
        return Item("dataset", "skip", title, f"in the image at {ds.path}")
    return Item("dataset", "skip", title, "the job reads no dataset")


def _hub_dataset(ctx: _Context) -> Item:
    from runner.hub.client import HubClient, HubError

    ds = ctx.spec.dataset
    assert ds.repo is not None and ds.revision is not None
    repo, revision = ds.repo, ds.revision
    title = "dataset"
    ref = f"{ds.repo}@{ds.revision}"
    client = HubClient.from_env()
    try:
        refs = _within(HUB_TIMEOUT_S, lambda: client.refs(repo, repo_type=ds.repo_type))
    except TimeoutError:
        return _hub_unreachable(client.endpoint, ref, f"no answer within {HUB_TIMEOUT_S:g} s")
    except HubError as err:
        if err.status in (401, 403, 404):
            return Item(
                "dataset",
                "fail",
                title,
                f"{ds.repo_type} repo {ds.repo} is not on {client.endpoint} "
                f"(HTTP {err.status}; a private repo needs HF_TOKEN)",
                "check dataset.repo in the job, or export HF_TOKEN for a private repo",
            )
        return _hub_unreachable(client.endpoint, ref, err)
    size = f", {_gb(ds.size_gb)} GB" if ds.size_gb is not None else ""
    if ds.revision in refs.tags:
        commit = refs.tags[ds.revision][:12]
        return Item("dataset", "ok", title, f"{ref}: tag -> {commit}{size}")
    if ds.revision in refs.branches:
        commit = refs.branches[ds.revision][:12]
        return Item(
            "dataset",
            "ok",
            title,
            f"{ref}: branch -> {commit}{size} (a branch moves: pin a commit or tag)",
        )
    # Not a name: a commit id. Listing a path that is never there answers "no entries" at a
    # revision that exists and 404 at one that does not, without reading the repo's tree.
    try:
        _within(
            HUB_TIMEOUT_S,
            lambda: client.list_files(
                repo, ".runner-preflight", revision=revision, repo_type=ds.repo_type
            ),
        )
    except TimeoutError:
        return _hub_unreachable(client.endpoint, ref, f"no answer within {HUB_TIMEOUT_S:g} s")
    except HubError as err:
        if err.status in (400, 404):
            return Item(
                "dataset",
                "fail",
                title,
                f"revision {ds.revision!r} is not in {ds.repo} (no such tag, branch or commit)",
                "pin an existing commit or tag in dataset.revision",
            )
        return _hub_unreachable(client.endpoint, ref, err)
    return Item("dataset", "ok", title, f"{ref}: commit exists{size}")


def _within(seconds: float, call: Callable[[], _T]) -> _T:
    """``call()``, or :class:`TimeoutError` after ``seconds`` (huggingface_hub sets no timeout
    on API calls: a Hub that never answers must not hold the launch). The call keeps running
    in a daemon thread, which dies with the process."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def run() -> None:
        try:
            box.put((True, call()))
        except BaseException as exc:  # handed to the caller, who re-raises it
            box.put((False, exc))

    threading.Thread(target=run, name="preflight-hub", daemon=True).start()
    try:
        ok, value = box.get(timeout=seconds)
    except queue.Empty:
        raise TimeoutError(f"no answer within {seconds:g} s") from None
    if not ok:
        raise value
    return cast(_T, value)


def _hub_unreachable(endpoint: str, ref: str, err: Exception | str) -> Item:
    return Item(
        "dataset",
        "warn",
        "dataset",
        f"cannot ask {endpoint} about {ref} ({str(err).split(' failed: ', 1)[-1]}); "
        "the host fetches it",
        "check the network or HF_ENDPOINT if the host cannot reach the Hub either",
    )


def _tree_bytes(path: Path) -> int:
    """Apparent size of every file under ``path`` (what a copy writes), symlinks not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # vanished while walking: the dataset check reports real damage
    return total


# --------------------------------------------------------------------------- disk


def _disk(ctx: _Context) -> Item:
    title = "disk"
    spec = ctx.spec
    parts: list[str] = []
    unknown: list[tuple[str, str]] = []  # (what, how to know it)
    total = 0.0
    if ctx.rented:
        data_gb = _rented_dataset_gb(ctx)
        if data_gb is None:
            unknown.append(("dataset size", "state dataset.size_gb in the job"))
        elif data_gb > 0:
            total += data_gb
            parts.append(f"dataset {_gb(data_gb)}")
        if spec.image is not None:
            size = ctx.image.size_bytes
            if size is None:
                unknown.append(("image size", "build or pull the image here to size it"))
            else:
                total += size / GB
                parts.append(f"image {_gb(size / GB)}")
    ck = spec.checkpoints
    copies = ck.keep + 1
    if ck.size_gb is None:
        unknown.append(("checkpoint size", "state checkpoints.size_gb in the job"))
    else:
        total += copies * ck.size_gb
        parts.append(f"{copies} x {_gb(ck.size_gb)} checkpoints (keep {ck.keep} + 1 being written)")
    floor = MARGIN_RENTED_GB if ctx.rented else MARGIN_LOCAL_GB
    margin = max(MARGIN_FRACTION * total, floor)
    total += margin
    parts.append(f"margin {_gb(margin)}")
    needs = f"needs {_gb(total, up=True)} GB: {' + '.join(parts)}"
    if unknown:
        needs += f" ({', '.join(what for what, _ in unknown)} unknown)"
    if ctx.rented:
        have = spec.resources.disk_gb if ctx.disk_gb is None else ctx.disk_gb
        where = f"--disk {_gb(have)} rents {_gb(have)} GB"
        fix = f"rent at least {math.ceil(total)} GB (--disk {math.ceil(total)})"
    else:
        target = ctx.run_dir if ctx.run_dir is not None else runs_dir()
        parent = _existing_parent(target)
        have = shutil.disk_usage(parent).free / GB
        where = f"{_gb(have)} GB free at {parent}"
        fix = "free space there or pass --run-dir on a larger disk"
    detail = f"{needs}; {where}"
    if have < total:
        return Item("disk", "fail", title, detail, fix)
    if unknown:
        return Item("disk", "warn", title, detail, unknown[0][1])
    return Item("disk", "ok", title, detail)


def _rented_dataset_gb(ctx: _Context) -> float | None:
    """What the dataset takes on a rented disk: a synced folder's size, a Hub one's stated size."""
    ds = ctx.spec.dataset
    if ctx.dataset_bytes is not None:
        return ctx.dataset_bytes / GB
    if ds.source == "hub":
        return ds.size_gb
    if ds.source in ("local", "synthetic"):
        return ds.size_gb
    return 0.0  # no dataset, or one inside the image (counted with it)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# --------------------------------------------------------------------------- RAM


def _ram(ctx: _Context) -> Item:
    title = "RAM"
    res = ctx.spec.resources
    workers = _num_workers(ctx.argv, {**ctx.job_env})
    if ctx.rented:
        asked = f"ram_gb {_gb(res.ram_gb)}" if res.ram_gb else "no ram_gb"
        return Item("ram", "skip", title, f"a rented host: the rent filters ask for it ({asked})")
    need = res.ram_gb or 0.0
    why = f"resources.ram_gb {_gb(need)}" if res.ram_gb else ""
    if workers is not None:
        count, source = workers
        by_workers = count * RAM_PER_WORKER_GB
        if by_workers > need:
            need = by_workers
            why = f"{count} workers x {_gb(RAM_PER_WORKER_GB)} GB ({source})" + (
                f"; the job states {_gb(res.ram_gb)}" if res.ram_gb else ""
            )
    if need <= 0:
        return Item("ram", "skip", title, "the job states no RAM (resources.ram_gb)")
    import psutil

    mem = psutil.virtual_memory()
    total, available = mem.total / GB, mem.available / GB
    detail = f"needs {_gb(need)} GB ({why}); {_gb(total)} GB here, {_gb(available)} available"
    if total < need:
        fix = "lower num_workers or ram_gb, or run it on a rented host"
        return Item("ram", "fail", title, detail, fix)
    if available < need:
        return Item("ram", "warn", title, detail, "close what else uses memory or it may swap")
    return Item("ram", "ok", title, detail)


def _num_workers(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str] | None:
    """The DataLoader workers the command line or environment asks for, and where (last wins)."""
    found: tuple[int, str] | None = None
    for key, value in env.items():
        if key.upper().endswith("NUM_WORKERS") and value.strip().isdigit():
            found = (int(value), f"{key}={value.strip()}")
    for i, token in enumerate(argv):
        match = _WORKERS_ITEM.search(token)
        if match:
            found = (int(match.group(1)), token.lstrip("-"))
        elif _WORKERS_FLAG.match(token) and i + 1 < len(argv) and argv[i + 1].isdigit():
            found = (int(argv[i + 1]), f"{token} {argv[i + 1]}")
    return found


# --------------------------------------------------------------------------- GPUs


def _gpus(ctx: _Context) -> list[Item]:
    res = ctx.spec.resources
    if ctx.rented:
        memory = f" with >= {_gb(res.min_gpu_memory_gb)} GB" if res.min_gpu_memory_gb else ""
        detail = f"a rented host: the rent filters ask for {max(1, res.gpus)} GPU(s){memory}"
        return [
            Item("gpu", "skip", "GPU memory", detail),
            Item("gpu_busy", "skip", "GPU in use", "a rented host is the job's alone"),
        ]
    device = ctx.device
    cpu_capable = res.gpus == 0
    if cpu_capable and (device is None or device.kind != "cuda"):
        return [
            Item("gpu", "skip", "GPU memory", "CPU-only job (resources.gpus 0)"),
            Item("gpu_busy", "skip", "GPU in use", "CPU-only job"),
        ]
    try:
        if device is None:
            from runner.launch.local import pick_device

            device = pick_device(ctx.spec, "auto")
        snaps = _chosen_gpus(device, ctx.environ)
    except RunnerError as err:
        fix = "run it on a rented GPU, or pick a profile that runs on the CPU"
        return [
            Item("gpu", "fail", "GPU memory", str(err).split("; run it on")[0], fix),
            Item("gpu_busy", "skip", "GPU in use", "no GPU to check"),
        ]
    fits, busy = _gpu_memory(ctx, snaps), _gpu_busy(ctx, snaps)
    if cpu_capable and busy.status == "fail":
        # A job that runs on the CPU too was given the freest GPU: sharing it slows it, no more.
        busy = Item(busy.key, "warn", busy.title, busy.detail, "the job may run slower beside them")
    return [fits, busy]


def _chosen_gpus(device: DeviceChoice, environ: Mapping[str, str]) -> list[Any]:
    """The snapshots of the GPUs ``device`` pins the job to, in its order."""
    from runner.sampling.nvml import open_nvml

    if device.kind != "cuda":
        raise RunnerError(f"the job needs a GPU and runs on {device.description}")
    wanted = [u for u in device.env.get("CUDA_VISIBLE_DEVICES", "").split(",") if u]
    with open_nvml(environ) as nvml:
        snaps = {s.uuid: s for s in nvml.sample() if s.uuid}
    missing = [u for u in wanted if u not in snaps or snaps[u].lost]
    if missing or not wanted:
        raise RunnerError(f"NVML does not see the GPU(s) picked ({', '.join(missing) or 'none'})")
    return [snaps[u] for u in wanted]


def _name(snap: Any) -> str:
    return f"GPU {snap.index} {snap.name or ''}".rstrip()


def _gpu_memory(ctx: _Context, snaps: Sequence[Any]) -> Item:
    title = "GPU memory"
    need = ctx.spec.resources.min_gpu_memory_gb
    # A "16 GB" card reports 15.99 GiB (the driver reserves a little): compare whole GiB.
    sizes = [
        (s, None if s.memory_total_bytes is None else s.memory_total_bytes / GIB) for s in snaps
    ]
    shown = ", ".join(f"{_name(s)} ({'?' if g is None else round(g)} GiB)" for s, g in sizes)
    if need is None:
        return Item("gpu", "ok", title, f"{shown}; the job states no min_gpu_memory_gb")
    small = [s for s, g in sizes if g is not None and round(g) < need]
    unknown = [s for s, g in sizes if g is None]
    detail = f"{shown}; the job needs {_gb(need)} GB per GPU"
    if small:
        return Item(
            "gpu",
            "fail",
            title,
            detail,
            "run it on a rented GPU with enough memory, or lower the batch size",
        )
    if unknown:
        return Item("gpu", "warn", title, detail + " (memory size not available)")
    return Item("gpu", "ok", title, detail)


def _gpu_busy(ctx: _Context, snaps: Sequence[Any]) -> Item:
    title = "GPU in use"
    need = ctx.spec.resources.min_gpu_memory_gb
    worst: Status = "ok"
    lines: list[str] = []
    for s in snaps:
        memory = s.memory_percent
        util = s.utilization_gpu_percent
        procs = s.processes or ()
        mem_text = "?" if memory is None else f"{memory:.0f} %"
        util_text = "?" if util is None else f"{util} %"
        use = f"{mem_text} memory, {util_text} utilisation"
        if procs:
            pids = ", ".join(str(p.pid) for p in procs[:3]) + (", ..." if len(procs) > 3 else "")
            many = len(procs) > 1
            use += f", {len(procs)} other process{'es' if many else ''} (pid{'s' if many else ''} "
            use += f"{pids})"
        status: Status = "ok"
        free = s.memory_free_bytes
        if (memory or 0) >= BUSY_PERCENT or (util or 0) >= BUSY_PERCENT:
            status = "fail"
        elif need is not None and free is not None and free / GIB < need * 0.98:
            status = "fail"
            use += f"; {free / GIB:.1f} GiB free < {_gb(need)} GB needed"
        elif procs or (memory or 0) >= SHARED_PERCENT or (util or 0) >= SHARED_PERCENT:
            status = "warn"
        verdict = {"ok": "is free", "warn": "is shared", "fail": "is busy"}[status]
        lines.append(f"{_name(s)} {verdict}: {use}")
        worst = max(worst, status, key=_SEVERITY.index)
    detail = "; ".join(lines)
    if worst == "fail":
        fix = "wait for it, free it, or pick a free GPU (`runner gpus`); --force shares it"
        return Item("gpu_busy", "fail", title, detail, fix)
    if worst == "warn":
        return Item("gpu_busy", "warn", title, detail, "the job may run slower beside them")
    return Item("gpu_busy", "ok", title, detail)


_SEVERITY: tuple[Status, ...] = ("skip", "ok", "warn", "fail")


# --------------------------------------------------------------------------- secrets


def _secrets(ctx: _Context) -> Item:
    title = "secrets"
    spec = ctx.spec
    if not spec.secrets:
        return Item("secrets", "skip", title, "the job names no secrets")
    missing_required: list[str] = []
    missing_optional: list[str] = []
    present: list[str] = []
    for secret in spec.secrets:
        if ctx.environ.get(secret.name):
            present.append(secret.name)
        elif secret.required:
            purpose = f": {secret.purpose}" if secret.purpose else ""
            missing_required.append(f"{secret.name} is not set (required{purpose})")
        else:
            missing_optional.append(f"{secret.name} is not set ({_lost(spec, secret)})")
    parts = [*missing_required, *missing_optional]
    if present:
        parts.append(f"set: {', '.join(present)}")
    detail = "; ".join(parts)
    if missing_required:
        first = next(s.name for s in spec.secrets if s.required and not ctx.environ.get(s.name))
        fix = f"export {first}=... in this shell first (never put it in the job file)"
        return Item("secrets", "fail", title, detail, fix)
    if missing_optional:
        return Item("secrets", "warn", title, detail, "export them to have that too")
    return Item("secrets", "ok", title, detail)


def _lost(spec: JobSpec, secret: Any) -> str:
    """What an optional secret's absence turns off, in a few words."""
    if secret.name == "HF_TOKEN" and spec.hub is not None:
        return f"optional: no pushes to {spec.hub.repo}"
    if secret.purpose:
        return f"optional: {secret.purpose} is off"
    return "optional"


# --------------------------------------------------------------------------- image


def _lookup_image(ref: str, environ: Mapping[str, str]) -> _ImageLookup:
    """Ask the local engine (``DOCKER_HOST`` or its socket) for ``ref``; never raises."""
    try:
        import docker
        import docker.errors
    except ImportError:
        return _ImageLookup(engine_error="the Docker SDK is not installed (pip install docker)")
    try:
        client = docker.from_env(environment=dict(environ), timeout=_DOCKER_TIMEOUT_S)
        client.ping()
    except Exception as exc:  # the SDK raises DockerException or the HTTP library's errors
        return _ImageLookup(engine_error=_first_line(exc))
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return _ImageLookup(client=client)
    except Exception as exc:
        return _ImageLookup(engine_error=f"the engine cannot look up {ref}: {_first_line(exc)}")
    attrs = image.attrs or {}
    env: dict[str, str] = {}
    for entry in (attrs.get("Config") or {}).get("Env") or []:
        key, _, value = str(entry).partition("=")
        env[key] = value
    size = attrs.get("Size")
    return _ImageLookup(
        found=True,
        size_bytes=int(size) if isinstance(size, (int, float)) else None,
        env=env,
        image_id=str(image.id or "")[:19] or None,
        client=client,
    )


def _image(ctx: _Context) -> Item:
    title = "image"
    ref = ctx.spec.image
    if ctx.backend == "local":
        if ref is not None and ctx.spec.profile is None:
            return Item(
                "image",
                "fail",
                title,
                f"{ctx.spec.name} runs in its Docker image {ref} and has no profile that runs here",
                "launch it with --docker or on a rented host, or pick a profile (--profile)",
            )
        return Item("image", "skip", title, "runs on this machine's Python")
    if ref is None:
        return Item("image", "skip", title, "the job names no image")
    found = ctx.image
    where = _docker_host(ctx.environ)
    if found.found:
        size = f", {_gb(found.size_bytes / GB)} GB" if found.size_bytes is not None else ""
        return Item("image", "ok", title, f"{ref} on the local engine ({found.image_id}{size})")
    if ctx.backend == "docker":
        if found.engine_error is not None:
            return Item(
                "image",
                "fail",
                title,
                f"no Docker engine answers at {where} ({found.engine_error})",
                "start it (`sudo systemctl start docker`) or point DOCKER_HOST at one",
            )
        return Item(
            "image",
            "fail",
            title,
            f"{ref} is not on the Docker engine at {where}",
            _build_hint(ref),
        )
    # A rented host pulls the image itself: ask the registry, through the engine.
    if found.client is None:
        return Item(
            "image",
            "warn",
            title,
            f"cannot check {ref}: no local Docker engine ({found.engine_error}); the host pulls it",
            "check the image name",
        )
    try:
        found.client.images.get_registry_data(ref)
    except Exception as exc:
        return Item(
            "image",
            "warn",
            title,
            f"{ref} is not on the local engine and its registry did not confirm it "
            f"({_first_line(exc)}); the host pulls it",
            "check the image name and that the host can pull it",
        )
    return Item("image", "ok", title, f"{ref} is in its registry")


def _build_hint(ref: str) -> str:
    repo = ref.rsplit("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    prefix, _, name = repo.rpartition("/")
    if prefix.endswith("runner") and name:
        return f"build it (`runner image build {name}`) or check image: in the job"
    return f"pull or build it (`docker pull {ref}`) or check image: in the job"


def _docker_host(environ: Mapping[str, str]) -> str:
    return environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _first_line(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc or type(exc).__name__)
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:160]


# --------------------------------------------------------------------------- user site


def _user_site(ctx: _Context) -> Item:
    title = "user site"
    if ctx.job_env.get("PYTHONNOUSERSITE"):
        return Item("user_site", "ok", title, "the job's env sets PYTHONNOUSERSITE")
    if ctx.backend != "local":
        image_env = ctx.image.env if ctx.spec.image is not None else None
        if image_env and image_env.get("PYTHONNOUSERSITE"):
            return Item("user_site", "ok", title, "the image sets PYTHONNOUSERSITE")
        return Item(
            "user_site",
            "warn",
            title,
            "neither the job's env nor the image sets PYTHONNOUSERSITE: packages in the "
            "image's ~/.local would shadow its own",
            "set PYTHONNOUSERSITE: '1' in the job's env",
        )
    if ctx.environ.get("PYTHONNOUSERSITE"):
        return Item("user_site", "ok", title, "PYTHONNOUSERSITE is set in this shell")
    if _isolated_venv():
        return Item("user_site", "ok", title, f"{sys.prefix} is a venv: no user site on its path")
    user_site = Path(site.getusersitepackages())
    mine = _distributions([user_site])
    if not mine:
        return Item("user_site", "ok", title, f"nothing installed in {user_site}")
    own = _distributions([Path(p) for p in site.getsitepackages()])
    shadowing = sorted(n for n in mine if n in SHADOWING or n in own)
    if shadowing:
        shown = ", ".join(shadowing[:5]) + (" ..." if len(shadowing) > 5 else "")
        return Item(
            "user_site",
            "fail",
            title,
            f"{user_site} holds {shown}, which shadow(s) this environment's own",
            "set PYTHONNOUSERSITE: '1' in the job's env, or remove them from the user site",
        )
    return Item(
        "user_site",
        "warn",
        title,
        f"{user_site} holds {len(mine)} package(s), none of them this environment's",
        "set PYTHONNOUSERSITE: '1' in the job's env to keep them out",
    )


def _isolated_venv() -> bool:
    """This interpreter is a venv without system site packages (whose user site is off)."""
    if sys.prefix == sys.base_prefix:
        return False
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    try:
        text = cfg.read_text(encoding="utf-8")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "include-system-site-packages":
            return value.strip().lower() != "true"
    return True


def _distributions(folders: Sequence[Path]) -> set[str]:
    """Normalised names of the packages installed in ``folders`` (their ``*.dist-info``)."""
    names: set[str] = set()
    for folder in folders:
        for entry in _entries(folder):
            match = _DIST.match(entry)
            if match:
                names.add(re.sub(r"[-_.]+", "_", match.group("name")).lower())
            elif entry.endswith(".py"):
                names.add(entry[:-3].lower())
            elif not entry.startswith((".", "_")) and "." not in entry:
                names.add(entry.lower())  # a bare package folder (copied in, or no metadata)
    names.discard("pycache")
    return names


def _entries(folder: Path) -> Iterator[str]:
    try:
        yield from (e.name for e in os.scandir(folder))
    except OSError:
        return


# --------------------------------------------------------------------------- the program

#: How the checklist names each known program.
_PROGRAM_NAMES = {"lerobot": "lerobot-train", "openpi": "openpi", "dino_wm": "DINO WM"}


def _ignored_fields(ctx: _Context) -> list[Item]:
    """One warning per job field the job's program never sees (none for generic jobs)."""
    program = program_for(ctx.spec)
    name = _PROGRAM_NAMES.get(program.kind, program.kind)
    items = []
    for entry in program.ignored_fields(ctx.spec):
        # "checkpoints.every_minutes (lerobot-train saves every --save_freq steps)"
        field, _, why = entry.partition(" (")
        why = why.removesuffix(")")
        detail = f"job field {field} does not reach {name}" + (f": {why}" if why else "")
        items.append(
            Item(
                f"ignored.{field}",
                "warn",
                "job field",
                detail,
                f"say it in {name}'s own terms (its command or config) if it matters",
            )
        )
    return items


def _fork(ctx: _Context) -> list[Item]:
    """A warning when the job needs a fork of its program and names none to build."""
    line = fork_notice(ctx.spec)
    if line is None:
        return []
    return [
        Item(
            "fork",
            "warn",
            "fork",
            line.removeprefix("note: "),
            "name the fork in program.repo and program.ref (runner image build passes them)",
        )
    ]


# --------------------------------------------------------------------------- formatting


def _gb(value: float | None, *, up: bool = False) -> str:
    """A size in GB as people say it: 173, 19, 1.5, 0.04; ``up`` rounds up (what is needed)."""
    if value is None:
        return "?"
    digits = 0 if value >= 10 or value == int(value) else 1 if value >= 1 else 2
    if up:
        scale = 10**digits
        value = math.ceil(value * scale - 1e-9) / scale
    return f"{value:.{digits}f}"
