"""``runner offers``, ``rent``, ``storage``, ``ps``, ``down``: verified vast.ai hosts.

Each command parses its flags, calls :mod:`runner.cloud` and reports through the one display
object; the vast.ai client (and the ``vastai`` package) is only imported inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runner.cli._app import app as display

if TYPE_CHECKING:
    from runner.cloud.offers import Ranking, Requirements
    from runner.cloud.provision import Rental
    from runner.cloud.vast import Instance, VastApi

#: The environment these commands read, for their help's epilog.
ENV_HELP = (
    "vast.ai key: VAST_API_KEY, else ~/.config/vastai/vast_api_key (or ~/.vast_api_key); "
    "VAST_URL overrides the API server. Local state (registry, SSH key, known hosts): "
    "$XDG_STATE_HOME/runner, else ~/.local/state/runner."
)

# -- filters shared by offers, rent and storage create ------------------------------------------

_DISK = typer.Option(
    None, "--disk", min=8, metavar="GB", help="Container disk to rent [default: job's, else 300]."
)
_GPU = typer.Option(None, "--gpu", metavar="NAME", help="GPU model, e.g. RTX_4090 or 'H100 SXM'.")
_GPUS = typer.Option(None, "--gpus", min=1, metavar="N", help="GPUs [default: job's, else 1].")
_GPU_MEM = typer.Option(None, "--min-gpu-mem", min=0, metavar="GB", help="Memory per GPU.")
_PRICE = typer.Option(None, "--max-price", min=0, metavar="$/H", help="Most dollars per hour.")
_RELIABILITY = typer.Option(
    0.95, "--min-reliability", min=0, max=1, metavar="R", help="Least host reliability."
)
_CUDA = typer.Option(None, "--cuda", metavar="VER", help="Least CUDA the driver supports.")
_INET = typer.Option(None, "--inet", min=0, metavar="MBPS", help="Least download bandwidth.")
_DATACENTER = typer.Option(False, "--datacenter", help="Only datacenter hosts.")
_REGION = typer.Option(
    None, "--region", metavar="R", help="Continent (NA, EU, AS, OC...) or countries: US,CA."
)
_JOB = typer.Option(None, "--job", metavar="NAME", help="Take resources (and image) from a job.")


def _requirements(
    *,
    job: str | None,
    disk: float | None,
    gpu: str | None,
    gpus: int | None,
    min_gpu_mem: float | None,
    max_price: float | None,
    min_reliability: float,
    cuda: float | None,
    inet: float | None,
    datacenter: bool,
    region: str | None,
    min_shm: float | None = None,
) -> Requirements:
    from runner.cloud.offers import DEFAULT_DISK_GB, Requirements

    overrides: dict[str, Any] = {
        "disk_gb": disk,
        "gpu_name": gpu,
        "gpus": gpus,
        "min_gpu_memory_gb": min_gpu_mem,
        "max_price": max_price,
        "min_reliability": min_reliability,
        "min_cuda": cuda,
        "min_inet_down": inet,
        "datacenter": datacenter or None,
        "region": region,
        "shm_gb": min_shm,
    }
    if job is not None:
        from runner.spec import load_job

        return Requirements.from_spec(load_job(job), **overrides)
    overrides["disk_gb"] = disk if disk is not None else DEFAULT_DISK_GB
    return Requirements(**{k: v for k, v in overrides.items() if v is not None})


def _client() -> VastApi:
    from runner.cloud.vast import VastApi

    return VastApi(notify=display.info)


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Plain aligned columns without trailing spaces (stable text for scripts and tests)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.3f}"


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


# -- runner offers --------------------------------------------------------------------------------


def offers(
    job: str | None = _JOB,
    disk: float | None = _DISK,
    gpu: str | None = _GPU,
    gpus: int | None = _GPUS,
    min_gpu_mem: float | None = _GPU_MEM,
    max_price: float | None = _PRICE,
    min_reliability: float = _RELIABILITY,
    cuda: float | None = _CUDA,
    inet: float | None = _INET,
    datacenter: bool = _DATACENTER,
    region: str | None = _REGION,
    limit: int = typer.Option(10, "--limit", min=1, metavar="N", help="Offers to show."),
    explain_: bool = typer.Option(False, "--explain", help="Say why the top offer wins."),
    as_json: bool = typer.Option(False, "--json", help="Ranked offers as JSON."),
) -> None:
    """vast.ai offers for the filters, best performance per dollar first.

    Score = perf / $ per hour x reliability (perf: vast.ai's dlperf, else total_flops); the
    price includes the disk. Machines that failed runner's checks before are left out.
    """
    from runner.cloud.offers import explain, search
    from runner.cloud.registry import Registry

    req = _requirements(
        job=job,
        disk=disk,
        gpu=gpu,
        gpus=gpus,
        min_gpu_mem=min_gpu_mem,
        max_price=max_price,
        min_reliability=min_reliability,
        cuda=cuda,
        inet=inet,
        datacenter=datacenter,
        region=region,
    )
    client = _client()
    bad = {m: b.reason for m, b in Registry().bad_machines().items()}
    ranking = search(client, req, bad_machines=bad)
    if as_json:
        display.raw(json.dumps(_ranking_json(ranking, limit), indent=2))
        return
    display.raw(_offers_table(ranking, limit))
    if explain_:
        display.raw("\n".join(explain(ranking)))


def _offers_table(ranking: Ranking, limit: int) -> str:
    rows = [
        [
            "offer",
            "gpus",
            "gpu_gb",
            "$/h",
            "score",
            "perf/$",
            "reliab",
            "disk_gb",
            "cuda",
            "inet_mbps",
            "machine",
            "where",
        ]
    ]
    for r in ranking.ranked[:limit]:
        o = r.offer
        rows.append(
            [
                str(o.id),
                f"{o.num_gpus}x {o.gpu_name}",
                f"{o.gpu_ram_gb:.0f}" if o.gpu_ram_gb else "-",
                f"{o.dph_total:.3f}",
                f"{r.score:.1f}",
                f"{r.perf_per_dollar:.1f}",
                f"{o.reliability:.3f}" if o.reliability is not None else "-",
                _gb(o.disk_space_gb),
                _gb(o.cuda_max_good),
                f"{o.inet_down:.0f}" if o.inet_down is not None else "-",
                str(o.machine_id),
                o.geolocation or "-",
            ]
        )
    more = len(ranking.ranked) - limit
    tail = f"\n({more} more; --limit N shows them)" if more > 0 else ""
    return _table(rows) + tail


def _ranking_json(ranking: Ranking, limit: int) -> list[dict[str, Any]]:
    return [
        {
            "score": round(r.score, 4),
            "perf": r.perf,
            "perf_kind": r.perf_kind,
            "perf_per_dollar": round(r.perf_per_dollar, 4),
            "offer": dict(r.offer.raw),
        }
        for r in ranking.ranked[:limit]
    ]


# -- runner rent ----------------------------------------------------------------------------------


def rent(
    disk: float | None = _DISK,
    gpu: str | None = _GPU,
    gpus: int | None = _GPUS,
    min_gpu_mem: float | None = _GPU_MEM,
    max_price: float | None = _PRICE,
    min_reliability: float = _RELIABILITY,
    cuda: float | None = _CUDA,
    inet: float | None = _INET,
    datacenter: bool = _DATACENTER,
    region: str | None = _REGION,
    image: str | None = typer.Option(
        None, "--image", metavar="IMAGE", help="Image to run [default: job's, else a PyTorch one]."
    ),
    storage: int | None = typer.Option(
        None, "--storage", metavar="ID", help="Attach this volume (offers on its machine only)."
    ),
    create_storage: float | None = typer.Option(
        None, "--create-storage", min=1, metavar="GB", help="Create a volume with the instance."
    ),
    mount: str = typer.Option(
        "/storage", "--mount", metavar="PATH", help="Where the volume is mounted."
    ),
    checkpoint_path: str = typer.Option(
        "/workspace", "--checkpoint-path", metavar="PATH", help="Path whose disk is verified."
    ),
    min_shm: float | None = typer.Option(
        None, "--min-shm", min=0, metavar="GB", help="Least /dev/shm [default: job's]."
    ),
    job: str | None = _JOB,
    max_tries: int = typer.Option(
        5, "--max-tries", min=1, metavar="N", help="Offers to try before giving up."
    ),
    boot_timeout: float = typer.Option(
        900, "--boot-timeout", min=10, metavar="S", help="Longest wait for running (image pull)."
    ),
    ssh_key: Path | None = typer.Option(
        None, "--ssh-key", metavar="PATH", help="Private key [default: runner's own]."
    ),
    as_json: bool = typer.Option(False, "--json", help="The verified host as JSON."),
) -> None:
    """Rent the best offer and verify it over SSH; fail over until a host passes.

    Verified means: the checkpoint path really has the disk paid for and is writable (not a
    small overlay, not a read-only "2 TB" mount), the GPUs are visible with their memory, and
    shm/RAM are as asked. A host that fails is destroyed and its machine remembered as bad;
    nothing runner created is left billing when it gives up or is interrupted.
    """
    from dataclasses import replace

    from runner.cloud.provision import (
        DEFAULT_IMAGE,
        RentEvent,
        Timeouts,
        VolumeChoice,
        sigterm_as_interrupt,
    )
    from runner.cloud.provision import rent as rent_host
    from runner.cloud.registry import Registry
    from runner.cloud.ssh import ensure_key
    from runner.cloud.vast import CloudError
    from runner.errors import UsageError

    if storage is not None and create_storage is not None:
        raise UsageError("--storage and --create-storage: choose one")
    req = _requirements(
        job=job,
        disk=disk,
        gpu=gpu,
        gpus=gpus,
        min_gpu_mem=min_gpu_mem,
        max_price=max_price,
        min_reliability=min_reliability,
        cuda=cuda,
        inet=inet,
        datacenter=datacenter,
        region=region,
        min_shm=min_shm,
    )
    req = replace(req, checkpoint_path=checkpoint_path)
    if image is None and job is not None:
        from runner.spec import load_job

        image = load_job(job).image
    if ssh_key is not None:
        ensure_key(ssh_key)  # a named key must exist: one clear line if not
    volume = None
    if storage is not None or create_storage is not None:
        volume = VolumeChoice(mount_path=mount, volume_id=storage, create_gb=create_storage)
    client = _client()

    def progress(event: RentEvent) -> None:
        if event.kind == "warn":
            display.warn(event.message)
        else:
            display.info(event.message)

    try:
        with sigterm_as_interrupt():
            rental = rent_host(
                client,
                req,
                image=image or DEFAULT_IMAGE,
                job=job,
                registry=Registry(),
                ssh_key=ssh_key,
                volume=volume,
                max_tries=max_tries,
                timeouts=Timeouts(boot_s=boot_timeout),
                progress=progress,
            )
    except KeyboardInterrupt:
        # Said here: typer turns an interrupt into a silent exit 130 before main() sees it.
        raise CloudError(
            "interrupted; every instance this rental created was destroyed", exit_code=130
        ) from None
    if as_json:
        display.raw(json.dumps(_rental_json(rental), indent=2))
        return
    display.raw(_rental_text(rental))


def _rental_text(r: Rental) -> str:
    o = r.offer
    tries = len(r.attempts)
    lines = [
        f"verified instance {r.instance.id} ({r.label}) on machine {o.machine_id}: "
        f"{o.num_gpus}x {o.gpu_name}, ${o.dph_total:.3f}/h, {tries} "
        f"{'try' if tries == 1 else 'tries'} in {r.elapsed_s:.1f} s",
        f"  {r.verdict.summary}",
    ]
    if r.volume_id is not None:
        mount = r.instance.volume_mount
        disk = r.report.disk(mount) if mount else None
        seen = disk.describe() if disk is not None else f"at {mount or '?'}"
        lines.append(f"  volume {r.volume_id}: {seen}")
    lines += [f"  note: {note}" for note in r.verdict.notes]
    lines.append(f"  ssh: {r.ssh_command}")
    lines.append(f"  destroy it with: runner down {r.instance.id}")
    return "\n".join(lines)


def _rental_json(r: Rental) -> dict[str, Any]:
    return {
        "instance_id": r.instance.id,
        "label": r.label,
        "offer": dict(r.offer.raw),
        "ssh": {"host": r.target.host, "port": r.target.port, "user": r.target.user},
        "ssh_command": r.ssh_command,
        "volume_id": r.volume_id,
        "verdict": {
            "ok": r.verdict.ok,
            "summary": r.verdict.summary,
            "notes": list(r.verdict.notes),
        },
        "report": r.report.to_dict(),
        "attempts": [
            {
                "offer_id": a.offer.id,
                "machine_id": a.offer.machine_id,
                "instance_id": a.instance_id,
                "outcome": a.outcome,
                "reason": a.reason,
                "marked_bad": a.marked_bad,
                "elapsed_s": round(a.elapsed_s, 3),
            }
            for a in r.attempts
        ],
        "elapsed_s": round(r.elapsed_s, 3),
    }


# -- runner ps / down -----------------------------------------------------------------------------


def ps(
    all_: bool = typer.Option(False, "--all", help="Also instances runner did not label."),
    as_json: bool = typer.Option(False, "--json", help="Rows as JSON."),
) -> None:
    """runner's instances on the account: status, price, cost so far, and orphans.

    An orphan is a runner-labelled instance the account has but this machine's registry does
    not know (rented from another machine, or the registry was lost): it bills all the same.
    Cost so far is an upper bound: hours since creation x the running price.
    """
    from runner.cloud.provision import is_runner_label
    from runner.cloud.registry import Registry

    client = _client()
    registry = Registry()
    known = {r.id: r for r in registry.instances()}
    listed = client.list_instances()
    on_account = {i.id for i in listed}
    for rec in known.values():
        if rec.live and rec.id not in on_account:
            registry.set_status(rec.id, "gone", reason="no longer on the account")
    mine = [i for i in listed if all_ or is_runner_label(i.label)]
    now = time.time()
    rows: list[dict[str, Any]] = []
    for inst in mine:
        known_rec = known.get(inst.id)
        runner_made = is_runner_label(inst.label)
        up = now - inst.start_date if inst.start_date else None
        cost = (inst.dph_total or 0.0) * up / 3600.0 if up is not None else None
        endpoint = inst.ssh_endpoints()
        rows.append(
            {
                "id": inst.id,
                "label": inst.label,
                "status": inst.actual_status or "provisioning",
                "status_msg": inst.status_msg,
                "gpu": f"{inst.num_gpus or '?'}x {inst.gpu_name or '?'}",
                "dph_total": inst.dph_total,
                "uptime_s": up,
                "cost_so_far": cost,
                "ssh": f"{endpoint[0][0]}:{endpoint[0][1]}" if endpoint else None,
                "registry": known_rec.status if known_rec is not None else None,
                "orphan": runner_made and known_rec is None,
                "runner": runner_made,
            }
        )
    if as_json:
        display.raw(json.dumps(rows, indent=2))
        return
    if not rows:
        display.raw("no instances on the account" if all_ else "no runner instances on the account")
        return
    table = [["id", "label", "status", "gpu", "$/h", "up", "cost", "ssh", "note"]]
    for row in rows:
        if row["orphan"]:
            note = "ORPHAN: not in this machine's registry"
        elif not row["runner"]:
            note = "not runner's"
        else:
            note = str(row["registry"])
        table.append(
            [
                str(row["id"]),
                str(row["label"] or "-"),
                str(row["status"]),
                str(row["gpu"]),
                _money(row["dph_total"]),
                _duration(row["uptime_s"]),
                f"~{_money(row['cost_so_far'])}",
                str(row["ssh"] or "-"),
                note,
            ]
        )
    display.raw(_table(table))
    orphans = [str(r["id"]) for r in rows if r["orphan"]]
    if orphans:
        display.warn(
            f"{len(orphans)} orphan(s) billing: {', '.join(orphans)}; `runner down ID` destroys one"
        )


def down(
    ids: list[int] | None = typer.Argument(None, metavar="[ID]...", help="Instances to destroy."),
    finished: bool = typer.Option(
        False, "--finished", help="Destroy runner's instances that stopped, exited or went offline."
    ),
) -> None:
    """Destroy runner's instances (by id, or every finished one); never one runner did not label."""
    from runner.cloud.provision import destroy, is_runner_label
    from runner.cloud.registry import Registry, state_dir
    from runner.cloud.ssh import SshTarget
    from runner.cloud.vast import CloudError
    from runner.errors import UsageError

    if bool(ids) == finished:
        raise UsageError("give instance ids or --finished (one of them)")
    client = _client()
    registry = Registry()
    targets: list[Instance] = []
    if finished:
        done = {"exited", "stopped", "offline", "frozen"}
        targets = [
            i
            for i in client.list_instances()
            if is_runner_label(i.label) and i.actual_status in done
        ]
        if not targets:
            display.raw("no finished runner instances")
            return
    else:
        for iid in ids or []:
            inst = client.show_instance(iid)
            if inst is None:
                with contextlib.suppress(CloudError):
                    if registry.instance(iid) is not None:
                        registry.set_status(iid, "gone", reason="no longer on the account")
                raise CloudError(f"instance {iid} is not on the account (destroyed already?)")
            if not is_runner_label(inst.label):
                raise CloudError(
                    f"instance {iid} is not runner's (label {inst.label!r}); runner destroys only "
                    f"what it labelled: use `vastai destroy instance {iid}` if you mean it"
                )
            targets.append(inst)
    known_hosts = state_dir() / "known_hosts"
    for inst in targets:
        destroy(client, inst.id)
        with contextlib.suppress(CloudError):
            if registry.instance(inst.id) is not None:
                registry.set_status(inst.id, "destroyed", reason="runner down")
        (known_hosts / SshTarget("-", 0, name=f"vast-{inst.id}").known_hosts_name).unlink(
            missing_ok=True
        )
        display.raw(
            f"destroyed instance {inst.id} ({inst.label}, {inst.actual_status or 'provisioning'})"
        )


# -- runner storage -------------------------------------------------------------------------------

storage_app = typer.Typer(
    help="Persistent volumes: they survive instance destroy and live on one machine.",
    no_args_is_help=True,
    epilog=ENV_HELP,
)


@storage_app.command("list")
def storage_list(as_json: bool = typer.Option(False, "--json", help="Volumes as JSON.")) -> None:
    """The account's volumes: size, machine, which instance uses them."""
    from runner.cloud.volumes import list_volumes

    vols = list_volumes(_client())
    if as_json:
        display.raw(json.dumps([dict(v.raw) for v in vols], indent=2))
        return
    if not vols:
        display.raw("no volumes; `runner storage create SIZE` makes one")
        return
    rows = [["id", "name", "size_gb", "machine", "status", "instances", "$/h", "where"]]
    for v in vols:
        rows.append(
            [
                str(v.id),
                v.name or "-",
                _gb(v.size_gb),
                str(v.machine_id or "-"),
                v.status or "-",
                ",".join(map(str, v.instances)) or "-",
                _money(v.dph_total),
                v.geolocation or "-",
            ]
        )
    display.raw(_table(rows))


@storage_app.command("create")
def storage_create(
    size: float = typer.Argument(..., min=1, metavar="SIZE", help="Size in GB (fixed for good)."),
    name: str | None = typer.Option(None, "--name", metavar="NAME", help="A name for it."),
    disk: float | None = _DISK,
    gpu: str | None = _GPU,
    gpus: int | None = _GPUS,
    min_gpu_mem: float | None = _GPU_MEM,
    max_price: float | None = _PRICE,
    min_reliability: float = _RELIABILITY,
    cuda: float | None = _CUDA,
    inet: float | None = _INET,
    datacenter: bool = _DATACENTER,
    region: str | None = _REGION,
    job: str | None = _JOB,
) -> None:
    """Create a SIZE GB volume on the machine of the best offer for the filters.

    A volume lives on one machine, so it goes where a GPU matching the filters is for rent;
    rent on it later with `runner rent --storage ID`.
    """
    from runner.cloud.registry import Registry
    from runner.cloud.volumes import create

    req = _requirements(
        job=job,
        disk=disk,
        gpu=gpu,
        gpus=gpus,
        min_gpu_mem=min_gpu_mem,
        max_price=max_price,
        min_reliability=min_reliability,
        cuda=cuda,
        inet=inet,
        datacenter=datacenter,
        region=region,
    )
    bad = {m: b.reason for m, b in Registry().bad_machines().items()}
    made = create(_client(), size, req, name=name, bad_machines=bad)
    v, o = made.volume, made.offer
    label = f" {v.name!r}" if v.name else ""
    display.raw(
        f"created volume {v.id}{label} ({v.size_gb:g} GB) on machine {o.machine_id} "
        f"({o.num_gpus}x {o.gpu_name}, {o.geolocation or '?'})\n"
        f"rent on it: runner rent --storage {v.id}"
    )


@storage_app.command("delete")
def storage_delete(
    volume_id: int = typer.Argument(..., metavar="ID", help="The volume (its data is lost)."),
) -> None:
    """Delete a volume (no instance may be using it)."""
    from runner.cloud.volumes import delete

    delete(_client(), volume_id)
    display.raw(f"deleted volume {volume_id}")
