"""Verify a rented host in one SSH round trip: its real disk, mounts, GPUs, memory and network.

:data:`PROBE_SCRIPT` is a self-contained, standard-library-only Python 3 script (3.6+) that
:func:`run_probe` pipes into ``python3 -`` on the host over one ``ssh`` call. It prints one
JSON line, parsed into a :class:`ProbeReport`:

- each checked path (the checkpoint path, a volume's mount): ``statvfs`` free/total, the
  filesystem type, device and mount point from ``/proc/self/mounts``, read-only, overlay,
  whether it is the same filesystem as ``/``, and a real write + fsync + read-back of 1 MiB;
- the other large mounts and whether they are read-only (the "2 TB disk" that ``df -h`` shows
  but nothing can write to);
- GPUs through NVML (``pynvml`` if the host's Python has it, else ``nvidia-smi
  --query-gpu=...``, else a ``RUNNER_FAKE_NVML`` marker from the environment,
  ``/etc/environment`` or ``/etc/runner-fake-nvml``): count, model, memory, driver, CUDA;
- ``/dev/shm``, RAM (and the container's memory limit), CPUs;
- whether the Hub answers a ``HEAD`` (``HF_ENDPOINT`` or https://huggingface.co), in a
  background thread bounded by a short timeout, so an unreachable network costs no more.

:func:`check` turns a report into a :class:`Verdict` against :class:`Requirements`: one line
per failed check, notes for what is worth knowing but not fatal.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from runner.cloud.offers import Requirements
from runner.cloud.ssh import Ssh, SshTarget
from runner.cloud.vast import CloudError, Offer

__all__ = [
    "DEFAULT_HUB",
    "PROBE_SCRIPT",
    "DiskReport",
    "GpuInfo",
    "GpuReport",
    "HubReport",
    "MountReport",
    "ProbeError",
    "ProbeReport",
    "Verdict",
    "check",
    "parse_report",
    "run_probe",
    "summarize",
]

DEFAULT_HUB = "https://huggingface.co"
#: A disk counts as the size paid for at 95 % of it (filesystems keep some for themselves).
DISK_TOLERANCE = 0.95
#: Free space must be at least this share of what was paid for (the image may use a little).
FREE_TOLERANCE = 0.90
_MARK = "RUNNER-PROBE "
_GB = 1e9

PROBE_SCRIPT = r"""
import json, os, re, shutil, subprocess, sys, threading, time

START = time.time()
ARGS = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
PSEUDO = set("proc sysfs cgroup cgroup2 devpts mqueue securityfs debugfs tracefs pstore bpf "
             "configfs fusectl hugetlbfs autofs binfmt_misc nsfs rpc_pipefs efivarfs selinuxfs "
             "devtmpfs ramfs".split())
OVERLAY = set(["overlay", "overlayfs", "fuse.fuse-overlayfs", "aufs"])


def err(exc):
    return "%s: %s" % (type(exc).__name__, exc)


def unescape(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def read_mounts():
    found = []
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 4:
                    found.append({"device": unescape(f[0]), "point": unescape(f[1]),
                                  "fs": f[2], "opts": f[3].split(",")})
    except Exception:
        pass
    return found


def find_mount(path, mounts):
    best = None
    for m in mounts:
        p = m["point"]
        inside = path == p or p == "/" or path.startswith(p if p.endswith("/") else p + "/")
        if inside and (best is None or len(p) >= len(best["point"])):
            best = m
    return best


def sizes(path):
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def hub_check(url, timeout, out):
    import urllib.error
    import urllib.request
    t = time.time()
    try:
        req = urllib.request.Request(url, method="HEAD")
        resp = urllib.request.urlopen(req, timeout=timeout)
        out.update(reachable=True, status=resp.status)
    except urllib.error.HTTPError as exc:  # an HTTP answer: the network path works
        out.update(reachable=True, status=exc.code)
    except Exception as exc:
        out.update(reachable=False, error=err(getattr(exc, "reason", None) or exc))
    out["elapsed_s"] = time.time() - t


def disk(path, mounts, touch_bytes):
    info = {"path": path}
    try:
        os.makedirs(path, exist_ok=True)
    except Exception as exc:
        info["error"] = err(exc)
        return info
    real = os.path.realpath(path)
    m = find_mount(real, mounts) or {}
    try:
        total, free = sizes(real)
    except Exception as exc:
        info["error"] = err(exc)
        return info
    info.update(mount_point=m.get("point"), fs_type=m.get("fs"), device=m.get("device"),
                read_only="ro" in m.get("opts", []), overlay=m.get("fs") in OVERLAY,
                same_fs_as_root=os.stat(real).st_dev == os.stat("/").st_dev,
                total_bytes=total, free_bytes=free)
    name = os.path.join(real, ".runner-probe-%d" % os.getpid())
    data = os.urandom(touch_bytes)
    t = time.time()
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        with open(name, "rb") as fh:
            back = fh.read()
        info["touch_ok"] = back == data
        if back != data:
            info["touch_error"] = "read back %d bytes that differ from the %d written" % (
                len(back), len(data))
    except Exception as exc:
        info["touch_ok"] = False
        info["touch_error"] = err(exc)
    finally:
        try:
            os.unlink(name)
        except Exception:
            pass
    info["touch_s"] = time.time() - t
    return info


def other_mounts(mounts, skip, min_bytes):
    out = {}
    for m in mounts:
        p = m["point"]
        if m["fs"] in PSEUDO or p in skip or p.startswith(("/proc", "/sys", "/dev")):
            continue
        if not os.path.isdir(p):  # Docker's bind-mounted files (/etc/hosts...)
            continue
        try:
            total, free = sizes(p)
        except Exception:
            continue
        if total < min_bytes:
            continue
        ro = "ro" in m["opts"] or not os.access(p, os.W_OK)
        out[p] = {"mount_point": p, "fs_type": m["fs"], "device": m["device"],
                  "total_bytes": total, "free_bytes": free, "read_only": ro}
    return sorted(out.values(), key=lambda d: d["mount_point"])


def cuda_text(value):
    return "%d.%d" % (value // 1000, (value % 1000) // 10) if value else None


def gpus_pynvml():
    import pynvml
    pynvml.nvmlInit()
    try:
        def text(v):
            return v.decode() if isinstance(v, bytes) else str(v)
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            found.append({"index": i, "name": text(pynvml.nvmlDeviceGetName(h)),
                          "memory_total_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total)})
        cuda = None
        for fn in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            if hasattr(pynvml, fn):
                try:
                    cuda = cuda_text(int(getattr(pynvml, fn)()))
                    break
                except Exception:
                    pass
        return {"source": "pynvml", "gpus": found, "cuda_version": cuda,
                "driver_version": text(pynvml.nvmlSystemGetDriverVersion())}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def gpus_smi(smi):
    q = subprocess.run([smi, "--query-gpu=index,name,memory.total,driver_version",
                        "--format=csv,noheader,nounits"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=20)
    if q.returncode != 0:
        return {"source": "nvidia-smi", "gpus": [],
                "error": "nvidia-smi failed: %s" % (q.stderr.strip() or q.stdout.strip())[:300]}
    found, driver = [], None
    for line in q.stdout.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 4:
            mem = int(float(f[2]) * 1048576) if f[2].replace(".", "").isdigit() else None
            found.append({"index": int(f[0]), "name": f[1], "memory_total_bytes": mem})
            driver = f[3]
    cuda = None
    try:
        head = subprocess.run([smi], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=20).stdout
        m = re.search(r"CUDA Version:\s*([0-9.]+)", head)
        cuda = m.group(1) if m else None
    except Exception:
        pass
    return {"source": "nvidia-smi", "gpus": found, "driver_version": driver, "cuda_version": cuda}


def fake_marker():
    spec = os.environ.get("RUNNER_FAKE_NVML", "").strip()
    if not spec:
        try:
            with open("/etc/environment") as fh:
                for line in fh:
                    k, _, v = line.strip().partition("=")
                    if k == "RUNNER_FAKE_NVML":
                        spec = v.strip().strip("'\"")
        except Exception:
            pass
    if not spec:
        try:
            with open("/etc/runner-fake-nvml") as fh:
                spec = fh.read().strip()
        except Exception:
            pass
    return spec


def gpus_fake(spec):
    out = {"source": "fake:" + spec, "gpus": []}
    kind, _, rest = spec.partition(":")
    if kind == "no-driver":
        out["error"] = "no NVIDIA driver (fake no-driver host)"
        return out
    if kind != "scenario":
        out["error"] = "fake NVML %r: the probe reads only scenario:NAME[:gpus=N]" % spec
        return out
    params = dict(p.split("=", 1) for p in rest.partition(":")[2].split(",") if "=" in p)
    # The scenario's card (runner.sampling.trace): an RTX A4000, 16376 MiB, driver 570.86.15.
    count = int(params.get("gpus", "1"))
    out["gpus"] = [{"index": i, "name": "NVIDIA RTX A4000", "memory_total_bytes": 16376 * 1048576}
                   for i in range(count)]
    out.update(driver_version="570.86.15", cuda_version="12.8")
    return out


def gpus():
    errors = []
    try:
        return gpus_pynvml()
    except ImportError:
        pass
    except Exception as exc:
        errors.append("pynvml: " + err(exc))
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            found = gpus_smi(smi)
            if found.get("gpus") or not fake_marker():
                return found
        except Exception as exc:
            errors.append("nvidia-smi: " + err(exc))
    spec = fake_marker()
    if spec:
        return gpus_fake(spec)
    return {"source": None, "gpus": [], "error": "; ".join(errors) or
            "no NVIDIA driver found (no pynvml, no nvidia-smi)"}


def memory():
    info = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("MemTotal", "MemAvailable"):
                    info[k] = int(v.split()[0]) * 1024
    except Exception:
        pass
    limit = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                raw = fh.read().strip()
            if raw.isdigit() and int(raw) < (1 << 60):
                limit = int(raw)
            break
        except Exception:
            continue
    return info.get("MemTotal"), info.get("MemAvailable"), limit


def main():
    paths = ARGS.get("paths") or ["/workspace"]
    hub_url = ARGS.get("hub") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    hub_timeout = float(ARGS.get("hub_timeout", 2.0))
    hub = {"url": hub_url}
    worker = threading.Thread(target=hub_check, args=(hub_url, hub_timeout, hub))
    worker.daemon = True
    hub_start = time.time()
    worker.start()
    mounts = read_mounts()
    disks = [disk(p, mounts, int(ARGS.get("touch_bytes", 1 << 20))) for p in paths]
    skip = set(d.get("mount_point") for d in disks) | set(["/dev/shm"])
    report = {
        "disks": disks,
        "mounts": other_mounts(mounts, skip, int(ARGS.get("min_mount_bytes", 1 << 30))),
        "gpus": gpus(),
    }
    try:
        report["shm_bytes"] = sizes("/dev/shm")[0]
    except Exception:
        report["shm_bytes"] = None
    report["ram_total_bytes"], report["ram_available_bytes"], report["ram_limit_bytes"] = memory()
    try:
        report["cpus"] = len(os.sched_getaffinity(0))
    except Exception:
        report["cpus"] = os.cpu_count()
    report["hostname"] = os.uname()[1]
    report["python"] = sys.version.split()[0]
    worker.join(max(0.0, hub_timeout + 0.25 - (time.time() - hub_start)))
    if worker.is_alive():
        hub.update(reachable=False, error="no answer within %gs" % hub_timeout,
                   elapsed_s=time.time() - hub_start)
    report["hub"] = hub
    report["elapsed_s"] = time.time() - START
    sys.stdout.write("RUNNER-PROBE " + json.dumps(report) + "\n")
    sys.stdout.flush()
    os._exit(0)  # a Hub check stuck in DNS must not hold the exit


main()
"""

# Finds a Python 3 on PATH or where common images keep it (SSH sessions start with a clean
# environment, so a conda image's /opt/conda/bin is not on PATH), then runs the script from stdin.
_LAUNCH = (
    "for p in python3 /opt/conda/bin/python3 /usr/local/bin/python3 /usr/bin/python3; do "
    'if command -v "$p" >/dev/null 2>&1; then exec "$p" - {args}; fi; done; '
    'echo "runner-probe: no python3 on this host" >&2; exit 127'
)


class ProbeError(CloudError):
    """The probe could not run or said nothing usable."""


@dataclass(frozen=True)
class DiskReport:
    """One checked path's filesystem (sizes in bytes; ``None`` when it could not be read)."""

    path: str
    error: str | None = None
    """Creating or measuring the path failed."""
    mount_point: str | None = None
    fs_type: str | None = None
    device: str | None = None
    read_only: bool = False
    overlay: bool = False
    same_fs_as_root: bool = False
    total_bytes: int | None = None
    free_bytes: int | None = None
    touch_ok: bool = False
    """1 MiB written, fsynced and read back identical."""
    touch_error: str | None = None
    touch_s: float | None = None

    def describe(self) -> str:
        """``/workspace: 300.0 GB free of 322.1 GB (tmpfs on /workspace)``."""
        if self.error:
            return f"{self.path}: {self.error}"
        where = f"{self.fs_type} on {self.mount_point}"
        if self.same_fs_as_root and self.mount_point != "/":
            where += ", same filesystem as /"
        elif self.same_fs_as_root:
            where += ", the root filesystem"
        return f"{self.path}: {_gb(self.free_bytes)} free of {_gb(self.total_bytes)} ({where})"


@dataclass(frozen=True)
class MountReport:
    """Another large mount on the host."""

    mount_point: str
    fs_type: str
    device: str
    total_bytes: int
    free_bytes: int
    read_only: bool


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_total_bytes: int | None


@dataclass(frozen=True)
class GpuReport:
    """What NVML (or nvidia-smi, or the fake marker) said."""

    source: str | None
    """``pynvml``, ``nvidia-smi``, ``fake:<spec>``, or ``None`` when nothing answered."""
    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    """The highest CUDA version the driver supports."""
    error: str | None = None


@dataclass(frozen=True)
class HubReport:
    url: str
    reachable: bool
    status: int | None = None
    error: str | None = None
    elapsed_s: float | None = None


@dataclass(frozen=True)
class ProbeReport:
    """Everything the probe saw on the host."""

    disks: tuple[DiskReport, ...]
    mounts: tuple[MountReport, ...]
    gpus: GpuReport
    shm_bytes: int | None
    ram_total_bytes: int | None
    ram_available_bytes: int | None
    ram_limit_bytes: int | None
    """The container's cgroup memory limit, ``None`` when there is none."""
    cpus: int | None
    hub: HubReport
    hostname: str | None = None
    python: str | None = None
    elapsed_s: float | None = None
    """Time the script took on the host."""
    round_trip_s: float | None = None
    """Time the ssh call took here, connection included."""

    def disk(self, path: str) -> DiskReport | None:
        return next((d for d in self.disks if d.path == path), None)

    @property
    def ram_bytes(self) -> int | None:
        """RAM the job can use: the cgroup limit when lower than the host's."""
        values = [v for v in (self.ram_total_bytes, self.ram_limit_bytes) if v]
        return min(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gb(value: float | None) -> str:
    return "?" if value is None else f"{value / _GB:.1f} GB"


def _gib(value: float | None) -> str:
    """GPU memory reads best in GiB (a "16 GB" card has 16376 MiB: 17.2 GB, 16.0 GiB)."""
    return "?" if value is None else f"{value / 2**30:.1f} GiB"


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = set(getattr(cls, "__dataclass_fields__", {}))
    return {k: v for k, v in data.items() if k in names}


def parse_report(stdout: str, *, round_trip_s: float | None = None) -> ProbeReport:
    """The report in the probe's output; raises :class:`ProbeError` when there is none."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        raise ProbeError("the probe printed no report")
    try:
        data = json.loads(line[len(_MARK) :])
        g = data.get("gpus") or {}
        gpus = GpuReport(
            source=g.get("source"),
            gpus=tuple(GpuInfo(**_known(GpuInfo, x)) for x in g.get("gpus") or []),
            driver_version=g.get("driver_version"),
            cuda_version=g.get("cuda_version"),
            error=g.get("error"),
        )
        h = data.get("hub") or {}
        hub = HubReport(**_known(HubReport, {"reachable": False, "url": "", **h}))
        return ProbeReport(
            disks=tuple(DiskReport(**_known(DiskReport, d)) for d in data.get("disks") or []),
            mounts=tuple(MountReport(**_known(MountReport, m)) for m in data.get("mounts") or []),
            gpus=gpus,
            shm_bytes=data.get("shm_bytes"),
            ram_total_bytes=data.get("ram_total_bytes"),
            ram_available_bytes=data.get("ram_available_bytes"),
            ram_limit_bytes=data.get("ram_limit_bytes"),
            cpus=data.get("cpus"),
            hub=hub,
            hostname=data.get("hostname"),
            python=data.get("python"),
            elapsed_s=data.get("elapsed_s"),
            round_trip_s=round_trip_s,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProbeError(f"the probe's report is malformed ({type(exc).__name__}: {exc})") from None


def run_probe(
    ssh: Ssh,
    target: SshTarget,
    *,
    paths: Sequence[str] = ("/workspace",),
    hub_url: str | None = None,
    hub_timeout_s: float = 2.0,
    timeout_s: float = 90.0,
) -> ProbeReport:
    """Run the probe on ``target`` in one ssh call and parse its report.

    Raises the ssh layer's :class:`~runner.cloud.ssh.SshError` when the host cannot be reached
    and :class:`ProbeError` when the probe itself could not run.
    """
    args = {"paths": list(paths), "hub": hub_url, "hub_timeout": hub_timeout_s}
    command = _LAUNCH.format(args=shlex.quote(json.dumps(args)))
    result = ssh.run(target, command, input=PROBE_SCRIPT, timeout_s=timeout_s)
    if result.returncode == 127 and "no python3" in result.stderr:
        raise ProbeError(
            f"{target} has no python3, which the probe needs; use an image that has it"
        )
    try:
        return parse_report(result.stdout, round_trip_s=result.elapsed_s)
    except ProbeError as exc:
        said = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        tail = f": {said[-1][:200]}" if said else ""
        raise ProbeError(f"{exc} on {target} (exit {result.returncode}{tail})") from None


@dataclass(frozen=True)
class Verdict:
    """The probe's report judged against the requirements."""

    failures: tuple[str, ...]
    """One line per failed check; empty means verified."""
    notes: tuple[str, ...] = ()
    """Worth knowing, not fatal (read-only big mounts, an unreachable Hub when not required)."""
    summary: str = ""
    """One line of what the host has."""

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class _PathNeed:
    path: str
    gb: float
    what: str


def _check_disk(d: DiskReport | None, need: _PathNeed, failures: list[str]) -> None:
    if d is None:
        failures.append(f"{need.path}: the probe did not report it")
        return
    if d.error:
        failures.append(f"{need.path}: {d.error}")
        return
    if d.read_only:
        failures.append(
            f"{need.path} is on a read-only filesystem ({d.fs_type} on {d.mount_point})"
        )
        return
    if not d.touch_ok:
        failures.append(f"{need.path}: the write test failed ({d.touch_error or 'no error text'})")
        return
    total, free = d.total_bytes or 0, d.free_bytes or 0
    if total < need.gb * _GB * DISK_TOLERANCE or free < need.gb * _GB * FREE_TOLERANCE:
        failures.append(f"{d.describe()}; {need.gb:g} GB {need.what}")


def check(
    report: ProbeReport,
    req: Requirements,
    *,
    offer: Offer | None = None,
    volume: tuple[str, float] | None = None,
) -> Verdict:
    """Judge ``report``: the checkpoint path has the disk paid for (and a volume its size),
    writable; the GPUs paid for are there with the memory and CUDA asked; shm, RAM and the Hub
    as asked. ``volume`` is ``(mount_path, size_gb)``.
    """
    failures: list[str] = []
    notes: list[str] = []
    needs = [_PathNeed(req.checkpoint_path, req.disk_gb, "were paid for")]
    if volume is not None:
        needs.append(_PathNeed(volume[0], volume[1], "is the volume's size"))
    for need in needs:
        _check_disk(report.disk(need.path), need, failures)

    ckpt = report.disk(req.checkpoint_path)
    if ckpt is not None and not ckpt.error and ckpt.same_fs_as_root:
        notes.append(
            f"{req.checkpoint_path} shares the container's root filesystem"
            f" ({ckpt.fs_type}): checkpoints and the image use the same space"
        )
    for m in report.mounts:
        if m.read_only and m.total_bytes >= 100 * _GB:
            notes.append(
                f"{m.mount_point}: {_gb(m.total_bytes)} {m.fs_type} mount is read-only"
                " (a host/driver mount): not usable for checkpoints"
            )

    g = report.gpus
    expected = offer.num_gpus if offer is not None and offer.num_gpus else req.gpus
    if expected > 0:
        seen = len(g.gpus)
        if seen == 0:
            failures.append(f"GPUs: none visible ({g.error or 'NVML reported no device'})")
        elif seen < expected:
            failures.append(f"GPUs: {seen} visible, {expected} paid for")
    if req.min_gpu_memory_gb is not None:
        floor = req.min_gpu_memory_gb * _GB * DISK_TOLERANCE
        for gpu in g.gpus:
            if gpu.memory_total_bytes is not None and gpu.memory_total_bytes < floor:
                failures.append(
                    f"GPU {gpu.index} ({gpu.name}): {_gib(gpu.memory_total_bytes)},"
                    f" at least {req.min_gpu_memory_gb:g} GB asked"
                )
    if req.min_cuda is not None:
        have = _version(g.cuda_version)
        if have is None or have < (_version(f"{req.min_cuda:g}") or (0,)):
            failures.append(
                f"CUDA: the driver supports {g.cuda_version or 'an unknown version'},"
                f" at least {req.min_cuda:g} asked"
            )
    real = offer is not None and g.gpus and not (g.source or "").startswith("fake:")
    if real and offer and not any(_same_model(offer.gpu_name, gpu.name) for gpu in g.gpus):
        notes.append(f"GPU model: the offer says {offer.gpu_name}, NVML says {g.gpus[0].name}")

    if req.shm_gb and (report.shm_bytes or 0) < req.shm_gb * _GB * DISK_TOLERANCE:
        failures.append(
            f"/dev/shm is {_gb(report.shm_bytes)}, {req.shm_gb:g} GB asked"
            " (DataLoader workers pass batches through it)"
        )
    if req.ram_gb and (report.ram_bytes or 0) < req.ram_gb * _GB * DISK_TOLERANCE:
        failures.append(f"RAM: {_gb(report.ram_bytes)} usable, {req.ram_gb:g} GB asked")

    hub = report.hub
    if not hub.reachable:
        line = f"the Hub ({hub.url}) is unreachable from the host ({hub.error or 'no answer'})"
        (failures if req.require_hub else notes).append(line)
    return Verdict(tuple(failures), tuple(notes), summarize(report, req))


def summarize(report: ProbeReport, req: Requirements | None = None) -> str:
    """One line: disk, GPUs, driver, shm, RAM."""
    parts = []
    path = req.checkpoint_path if req is not None else None
    d = report.disk(path) if path else (report.disks[0] if report.disks else None)
    if d is not None:
        parts.append(d.describe() + (", writable" if d.touch_ok else ", NOT writable"))
    g = report.gpus
    if g.gpus:
        names = sorted({x.name for x in g.gpus})
        mem = g.gpus[0].memory_total_bytes
        parts.append(
            f"{len(g.gpus)}x {'/'.join(names)} {_gib(mem)}"
            f" (driver {g.driver_version or '?'}, CUDA {g.cuda_version or '?'})"
        )
    else:
        parts.append("no GPU")
    parts.append(f"shm {_gb(report.shm_bytes)}, RAM {_gb(report.ram_bytes)}")
    return "; ".join(parts)


_FORM_FACTORS = frozenset({"sxm", "sxm2", "sxm4", "sxm5", "pcie", "nvl", "hbm3", "hbm2e"})


def _same_model(offer_name: str, nvml_name: str) -> bool:
    """vast.ai's short name against NVML's: "H100 SXM" is "NVIDIA H100 80GB HBM3"."""
    have = nvml_name.lower().replace("-", " ")
    words = [w for w in offer_name.lower().replace("-", " ").split() if w not in _FORM_FACTORS]
    return all(w in have for w in words)


def _version(text: str | None) -> tuple[int, ...] | None:
    """``"12.4"`` -> ``(12, 4)``: versions compare part by part (12.10 > 12.4)."""
    if not text:
        return None
    try:
        return tuple(int(p) for p in text.strip().split(".")[:2])
    except ValueError:
        return None
