"""What a host must have, how offers are searched for it, and which offer wins.

:class:`Requirements` is one rental's needs: the search filters (GPU, price, reliability,
CUDA, network, datacenter, region, machine) and what the probe checks once the host is up
(disk paid for, GPUs and their memory, shared memory, RAM). :func:`search` sends the filters
to vast.ai and checks them again here (a filter the server ignores still applies), drops
machines remembered as bad, and ranks the rest.

Ranking is performance per dollar, weighted by reliability::

    score = perf / dph_total x reliability

``perf`` is vast.ai's ``dlperf`` (its deep-learning benchmark of the whole bundle), or
``total_flops`` when an offer has no dlperf; ``dph_total`` is the hourly price with the disk
priced in; ``reliability`` is the share of time the machine has been up, i.e. roughly the
chance this rental is not lost to the host. :func:`explain` says in words why the top offer
won and by how much. When nothing matches, :func:`diagnose` finds the filter that emptied the
list (one broad search, the filters applied here one at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from runner.cloud.vast import CloudError, Offer, VastClient

if TYPE_CHECKING:
    from runner.spec import JobSpec

__all__ = [
    "DEFAULT_DISK_GB",
    "DEFAULT_MIN_RELIABILITY",
    "REGIONS",
    "Filter",
    "NoOffersError",
    "Ranked",
    "Ranking",
    "Requirements",
    "diagnose",
    "explain",
    "filters",
    "rank",
    "search",
]

#: What a rental asks for when nothing says otherwise: users lost runs on 50 GB and 150 GB.
DEFAULT_DISK_GB = 300.0
DEFAULT_MIN_RELIABILITY = 0.95


def _codes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Continent codes (as the vastai CLI's ``georegion``) to country codes.
REGIONS: Mapping[str, tuple[str, ...]] = {
    "NA": _codes("US CA"),
    "EU": _codes(
        "AL AD AT BY BE BA BG HR CY CZ DK EE FI FR GE DE GR HU IS IE IT LV LI LT LU MT MD MC ME "
        "NL NO PL PT RO RS SK SI ES SE CH UA GB VA MK"
    ),
    "AS": _codes(
        "AE AM AZ BD BH BN BT MM KH IN ID IL JP JO KZ MY MN NP KR PK PH QA SA SG LK TW TH TR VN "
        "HK CN OM"
    ),
    "OC": _codes("AU NZ"),
    "LC": _codes("AR BR CL CO CR MX PA PE PR UY"),
    "AF": _codes("EG KE MA NG ZA TN"),
}
_REGION_NAMES = {
    "north-america": "NA",
    "europe": "EU",
    "asia": "AS",
    "oceania": "OC",
    "latin-america": "LC",
    "south-america": "LC",
    "africa": "AF",
}


class NoOffersError(CloudError):
    """No offer matches; the message names the filter that emptied the list when it can."""


@dataclass(frozen=True)
class Requirements:
    """One rental's needs: search filters, plus what the probe checks on the host.

    Sizes are GB (10^9 bytes) like vast.ai's; ``None`` means "not asked for".
    """

    disk_gb: float = DEFAULT_DISK_GB
    """Container disk to rent; the probe checks the checkpoint path really has it."""
    gpus: int = 1
    """GPUs per instance (searched exactly: more would be paid for and idle)."""
    gpu_name: str | None = None
    """vast.ai's model name, e.g. ``RTX 4090`` (``RTX_4090`` works too)."""
    min_gpu_memory_gb: float | None = None
    """Memory per GPU."""
    max_price: float | None = None
    """Dollars per hour, all in (``dph_total`` with the disk priced)."""
    min_reliability: float = DEFAULT_MIN_RELIABILITY
    min_cuda: float | None = None
    """Highest CUDA version the host's driver supports (``cuda_max_good``), at least this."""
    min_inet_down: float | None = None
    """Download bandwidth, Mbit/s."""
    datacenter: bool = False
    """Only datacenter hosts (``hosting_type`` 1)."""
    region: str | None = None
    """Continent code (NA, EU, AS, OC, LC, AF), a name (europe...) or country codes ``US,CA``."""
    machine_id: int | None = None
    """Only this machine (a local volume lives on one)."""
    verified: bool = True
    """Only machines vast.ai has verified."""
    shm_gb: float | None = None
    """``/dev/shm`` at least this (DataLoader workers share batches through it)."""
    ram_gb: float | None = None
    """Host RAM (or the container's memory limit) at least this."""
    checkpoint_path: str = "/workspace"
    """Where checkpoints go on the host: the path whose filesystem the probe measures."""
    require_hub: bool = False
    """Fail verification when the Hugging Face Hub is unreachable from the host."""

    @classmethod
    def from_spec(cls, spec: JobSpec, **overrides: Any) -> Requirements:
        """A job's resources (GPUs, GPU memory, disk, shm, RAM); ``overrides`` win when set."""
        res = spec.resources
        base = cls(
            disk_gb=float(res.disk_gb),
            gpus=max(1, int(res.gpus)),
            min_gpu_memory_gb=res.min_gpu_memory_gb,
            shm_gb=res.shm_gb or None,
            ram_gb=res.ram_gb,
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})

    def countries(self) -> tuple[str, ...] | None:
        """The region as country codes; raises :class:`CloudError` for an unknown name."""
        if not self.region:
            return None
        text = self.region.strip()
        code = _REGION_NAMES.get(text.lower(), text.upper())
        if code in REGIONS:
            return REGIONS[code]
        parts = tuple(p.strip().upper() for p in text.split(",") if p.strip())
        if not parts or any(len(p) != 2 or not p.isalpha() for p in parts):
            known = ", ".join([*REGIONS, *_REGION_NAMES])
            raise CloudError(
                f"--region {self.region!r}: use a continent ({known}) or country codes like US,CA"
            )
        return parts

    @property
    def gpu_model(self) -> str | None:
        return self.gpu_name.replace("_", " ").strip() if self.gpu_name else None


@dataclass(frozen=True)
class Filter:
    """One search condition: what vast.ai is sent, and the same test applied here."""

    flag: str
    """The command-line flag that set it (``--disk``), or ``default`` for runner's own."""
    text: str
    """In words: ``disk_space >= 300 GB``."""
    query: Mapping[str, Any]
    test: Callable[[Offer], bool] = field(compare=False)


def _country(offer: Offer) -> str | None:
    geo = (offer.geolocation or "").strip()
    if not geo:
        return None
    return geo.rsplit(",", 1)[-1].strip().upper()


def _ge(value: float | None, bound: float) -> bool:
    return value is not None and value >= bound - 1e-9


def filters(req: Requirements) -> list[Filter]:
    """The search conditions of ``req``, runner's defaults first, then the user's in flag order."""
    out = [
        Filter("default", "rentable", {"rentable": {"eq": True}}, lambda o: True),
        Filter("default", "not rented", {"rented": {"eq": False}}, lambda o: True),
        Filter("default", "not external", {"external": {"eq": False}}, lambda o: True),
    ]
    if req.verified:
        out.append(
            Filter(
                "default",
                "verified",
                {"verified": {"eq": True}},
                lambda o: o.verification in (None, "verified"),
            )
        )
    if req.machine_id is not None:
        machine = req.machine_id
        out.append(
            Filter(
                "--storage",
                f"machine {machine} (where the volume lives)",
                {"machine_id": {"eq": machine}},
                lambda o: o.machine_id == machine,
            )
        )
    disk = req.disk_gb
    out.append(
        Filter(
            "--disk",
            f"disk_space >= {disk:g} GB",
            {"disk_space": {"gte": disk}},
            lambda o: _ge(o.disk_space_gb, disk),
        )
    )
    if req.gpu_model:
        model = req.gpu_model
        out.append(
            Filter(
                "--gpu",
                f"gpu_name = {model}",
                {"gpu_name": {"eq": model}},
                lambda o: o.gpu_name.lower() == model.lower(),
            )
        )
    gpus = req.gpus
    out.append(
        Filter(
            "--gpus", f"num_gpus = {gpus}", {"num_gpus": {"eq": gpus}}, lambda o: o.num_gpus == gpus
        )
    )
    if req.min_gpu_memory_gb is not None:
        mem = req.min_gpu_memory_gb
        out.append(
            Filter(
                "--min-gpu-mem",
                f"gpu_ram >= {mem:g} GB",
                {"gpu_ram": {"gte": mem * 1000.0}},
                lambda o: _ge(o.gpu_ram_mb, mem * 1000.0),
            )
        )
    if req.min_reliability > 0:
        rel = req.min_reliability
        out.append(
            Filter(
                "--min-reliability",
                f"reliability >= {rel:g}",
                {"reliability": {"gte": rel}},
                lambda o: _ge(o.reliability, rel),
            )
        )
    if req.max_price is not None:
        price = req.max_price
        out.append(
            Filter(
                "--max-price",
                f"dph_total <= ${price:g}/h",
                {"dph_total": {"lte": price}},
                lambda o: o.dph_total <= price + 1e-9,
            )
        )
    if req.min_cuda is not None:
        cuda = req.min_cuda
        out.append(
            Filter(
                "--cuda",
                f"cuda_max_good >= {cuda:g}",
                {"cuda_max_good": {"gte": cuda}},
                lambda o: _ge(o.cuda_max_good, cuda),
            )
        )
    if req.min_inet_down is not None:
        inet = req.min_inet_down
        out.append(
            Filter(
                "--inet",
                f"inet_down >= {inet:g} Mbit/s",
                {"inet_down": {"gte": inet}},
                lambda o: _ge(o.inet_down, inet),
            )
        )
    if req.datacenter:
        # vast.ai knows "datacenter" as a search field; hosting_type is what offers carry.
        out.append(
            Filter(
                "--datacenter",
                "datacenter host",
                {"datacenter": {"eq": True}},
                lambda o: o.hosting_type == 1,
            )
        )
    countries = req.countries()
    if countries:
        wanted = frozenset(countries)
        out.append(
            Filter(
                "--region",
                f"geolocation in {req.region}",
                {"geolocation": {"in": list(countries)}},
                lambda o: _country(o) in wanted,
            )
        )
    return out


def _query(conditions: Sequence[Filter]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for cond in conditions:
        for key, ops in cond.query.items():
            query.setdefault(key, {}).update(ops)
    return query


@dataclass(frozen=True)
class Ranked:
    """An offer with its score (see the module docstring)."""

    offer: Offer
    score: float
    perf: float
    perf_kind: str
    """``dlperf`` or ``total_flops`` (or ``none``: unknown performance, ranked last)."""

    @property
    def perf_per_dollar(self) -> float:
        return self.perf / self.offer.dph_total if self.offer.dph_total > 0 else 0.0


@dataclass(frozen=True)
class Ranking:
    """Offers best first, and the ones left out with why."""

    ranked: tuple[Ranked, ...]
    skipped: tuple[tuple[Offer, str], ...] = ()
    conditions: tuple[Filter, ...] = ()

    @property
    def best(self) -> Ranked | None:
        return self.ranked[0] if self.ranked else None


def _score(offer: Offer) -> Ranked:
    if offer.dlperf is not None and offer.dlperf > 0:
        perf, kind = offer.dlperf, "dlperf"
    elif offer.total_flops is not None and offer.total_flops > 0:
        perf, kind = offer.total_flops, "total_flops"
    else:
        perf, kind = 0.0, "none"
    reliability = offer.reliability if offer.reliability is not None else 0.0
    price = offer.dph_total if offer.dph_total > 0 else math.inf
    return Ranked(offer, perf / price * reliability, perf, kind)


def rank(
    offers: Sequence[Offer],
    req: Requirements,
    *,
    bad_machines: Mapping[int, str] | None = None,
    conditions: Sequence[Filter] | None = None,
) -> Ranking:
    """Offers that pass every condition (checked here too) and are on no bad machine, best first.

    Ties go to the cheaper offer, then the lower id, so the order is stable.
    """
    conds = list(conditions) if conditions is not None else filters(req)
    bad = bad_machines or {}
    kept: list[Ranked] = []
    skipped: list[tuple[Offer, str]] = []
    seen: set[int] = set()
    for offer in offers:
        if offer.id in seen:
            continue
        seen.add(offer.id)
        failed = next((c for c in conds if not c.test(offer)), None)
        if failed is not None:
            skipped.append((offer, f"fails {failed.text}"))
        elif offer.machine_id in bad:
            skipped.append(
                (offer, f"machine {offer.machine_id} is marked bad: {bad[offer.machine_id]}")
            )
        else:
            kept.append(_score(offer))
    # Offers of unknown performance go last, among themselves cheapest first.
    kept.sort(key=lambda r: (r.perf_kind == "none", -r.score, r.offer.dph_total, r.offer.id))
    return Ranking(tuple(kept), tuple(skipped), tuple(conds))


def search(
    client: VastClient,
    req: Requirements,
    *,
    bad_machines: Mapping[int, str] | None = None,
    limit: int = 100,
) -> Ranking:
    """Search vast.ai for ``req`` and rank what comes back.

    Raises :class:`NoOffersError` (naming the filter that emptied the list, when it can) if no
    offer is left, and the client's :class:`CloudError` on API failures.
    """
    conds = filters(req)
    offers = client.search_offers(_query(conds), disk_gb=req.disk_gb, limit=limit)
    ranking = rank(offers, req, bad_machines=bad_machines, conditions=conds)
    if ranking.ranked:
        return ranking
    if offers:  # the server found some, but each failed a check here or is on a bad machine
        reasons = sorted({why for _, why in ranking.skipped})
        raise NoOffersError(
            f"no usable offer: {len(offers)} matched the search but "
            f"{'; '.join(reasons[:3])}{' ...' if len(reasons) > 3 else ''}"
        )
    raise NoOffersError(diagnose(client, req, conds))


def diagnose(client: VastClient, req: Requirements, conditions: Sequence[Filter]) -> str:
    """One line naming the filter that empties the list (one broad search, filters applied here)."""
    base = [c for c in conditions if c.flag == "default"]
    try:
        broad = client.search_offers(_query(base), disk_gb=req.disk_gb, limit=1000)
    except CloudError:
        broad = []
    if not broad:
        return "no offer matches, and vast.ai lists no rentable offer at all right now"
    left = list(broad)
    steps = [f"{len(left)} rentable offers"]
    for cond in conditions:
        if cond.flag == "default":
            continue
        after = [o for o in left if cond.test(o)]
        if not after:
            hint = _hint(cond, left)
            alone = [o for o in broad if cond.test(o)]
            elsewhere = ""
            if alone:
                # Offers with this property exist: say which earlier filter they fail.
                earlier = [c for c in conditions if c.flag != "default" and c is not cond]
                failing = sorted({c.text for o in alone for c in earlier if not c.test(o)})
                elsewhere = f"; {len(alone)} offer(s) with {cond.text} fail {', '.join(failing)}"
            return (
                f"no offer matches {cond.flag} ({cond.text}): "
                f"{', '.join(steps)}, none of them has {cond.text}{hint}{elsewhere}"
            )
        left = after
        steps.append(f"{len(left)} with {cond.text}")
    return (
        "no offer matches the search, though these filters alone leave "
        f"{len(left)} ({', '.join(steps)}); offers change by the minute, try again"
    )


def _hint(cond: Filter, offers: Sequence[Offer]) -> str:
    """What the remaining offers do have, for the emptying filter."""
    values: list[str] = []
    if cond.flag == "--disk":
        best = max((o.disk_space_gb or 0.0) for o in offers)
        values.append(f"the most is {best:g} GB")
    elif cond.flag == "--gpu":
        names = sorted({o.gpu_name for o in offers})
        values.append("there are " + ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
    elif cond.flag == "--gpus":
        counts = sorted({o.num_gpus for o in offers})
        values.append("GPU counts offered: " + ", ".join(map(str, counts)))
    elif cond.flag == "--max-price":
        cheapest = min(o.dph_total for o in offers)
        values.append(f"the cheapest is ${cheapest:.3f}/h")
    elif cond.flag == "--min-gpu-mem":
        most = max((o.gpu_ram_gb or 0.0) for o in offers)
        values.append(f"the most is {most:.0f} GB per GPU")
    elif cond.flag == "--min-reliability":
        most = max((o.reliability or 0.0) for o in offers)
        values.append(f"the best is {most:.3f}")
    elif cond.flag == "--cuda":
        most = max((o.cuda_max_good or 0.0) for o in offers)
        values.append(f"the newest is {most:g}")
    elif cond.flag == "--storage":
        values.append("the volume's machine has no free offer now; try later or another volume")
    return f" ({values[0]})" if values else ""


def explain(ranking: Ranking, *, top: int = 3) -> list[str]:
    """Why the best offer won, in a few lines: its score's parts and how the next ones compare."""
    best = ranking.best
    if best is None:
        return ["no offer to explain"]
    o = best.offer
    lines = [
        f"{o.describe()} wins with score {best.score:.1f}:",
        f"  {best.perf_kind} {best.perf:.1f} for ${o.dph_total:.3f}/h = "
        f"{best.perf_per_dollar:.1f} per $/h, x reliability {o.reliability or 0:.3f}",
    ]
    for other in ranking.ranked[1:top]:
        p = other.offer
        gap = (1 - other.score / best.score) * 100 if best.score > 0 else 0.0
        why = []
        if p.dph_total > o.dph_total:
            why.append(f"${p.dph_total - o.dph_total:.3f}/h dearer")
        if other.perf < best.perf:
            why.append(f"{best.perf - other.perf:.1f} less {other.perf_kind}")
        if (p.reliability or 0) < (o.reliability or 0):
            why.append(f"reliability {p.reliability or 0:.3f}")
        because = f": {', '.join(why)}" if why else ""
        lines.append(f"  next: {p.describe()} scores {other.score:.1f} ({gap:.0f}% lower{because})")
    if ranking.skipped:
        bad = [why for _, why in ranking.skipped if "marked bad" in why]
        lines.append(
            f"  left out: {len(ranking.skipped)} offer(s)"
            + (f", {len(bad)} on machines marked bad" if bad else "")
        )
    lines.append("  score = perf / dph_total x reliability (perf: dlperf, else total_flops)")
    return lines
