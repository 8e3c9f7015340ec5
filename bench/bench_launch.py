"""runner's own time from ``launch`` to the first training step on a rented host that is ready
at once, and dataset sync throughput against plain ``rsync``, side by side.

    .venv/bin/python bench/bench_launch.py [--launches 3] [--mb 256] [--rounds 5]
                                           [--image runner-test/launch-dev:latest]

Method. The loopback vast.ai (``tests/fakes/vast_server.py``) runs in a child process with one
clean offer (no boot delay, a fake GPU), so this process holds only runner; its instances run
``--image`` (an image with runner in it: ``runner-test/launch-dev``, which the slow launch tests
build from this checkout, or ``runner/franka-embedded``).

(a) Each round: :func:`runner.launch.remote.launch_vast` of the stdlib toy job
(``tests/launch/toy.py``, so no torch import is counted) with a small dataset, then the first
step's wall-clock time is read from the run's ``metrics.jsonl`` on the host (the container
shares this machine's clock). runner's own time = first step - launch start - host start -
dataset transfer, where host start is the span the server spent from create to ``running``
(the API's ``start_date`` and ``uptime_mins``) and dataset transfer is the sync's own time.
What remains is runner's: search, create, polling latency, SSH and the probe, the run folder,
the detached agent's start, its Python and the training process's start. Target <= 10 s.

(b) On the last round's host, ``--rounds`` alternating transfers of the same ``--mb`` folder
(64 files) into fresh folders: runner's :func:`runner.launch.sync.sync_folder` and plain
``rsync -a`` over the same ``ssh`` options. Ratio = plain time / runner time (throughput of
runner relative to plain rsync), median of the rounds. Target >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.cloud.offers import Requirements  # noqa: E402
from runner.cloud.provision import destroy  # noqa: E402
from runner.cloud.registry import Registry  # noqa: E402
from runner.cloud.ssh import Ssh, SshTarget  # noqa: E402
from runner.cloud.vast import VastApi  # noqa: E402
from runner.launch.hostside import make_launch  # noqa: E402
from runner.launch.remote import launch_vast  # noqa: E402
from runner.launch.runs import Runs, new_run_id  # noqa: E402
from runner.launch.sync import sync_folder  # noqa: E402
from tests.launch.toy import toy_dataset, toy_job  # noqa: E402

OVERHEAD_TARGET_S = 10.0
SYNC_TARGET = 0.9
NAME_PREFIX = "runner-vast-fake-"
_PHASES = ("rent", "prepare", "dataset", "agent")

_SERVER = """
import json, sys
from tests.fakes.vast_server import VastServer, docker_unavailable_reason
reason = docker_unavailable_reason()
if reason:
    print(json.dumps({"error": reason}), flush=True)
    sys.exit(0)
with VastServer() as s:
    s.add_offer(dph_total=0.5, disk_space=500, fake_gpu="scenario:healthy:gpus=1")
    print(json.dumps({"url": s.url, "key": s.api_key}), flush=True)
    sys.stdin.readline()  # until the bench is done
"""


def _host_start_s(api: VastApi, instance_id: int) -> float:
    """Seconds the server spent from create to ``running`` (from the API's own fields)."""
    inst = api.show_instance(instance_id)
    assert inst is not None and inst.start_date is not None
    uptime_s = float(inst.raw.get("uptime_mins") or 0.0) * 60.0
    return (time.time() - uptime_s) - inst.start_date


def _exec(instance_id: int, command: str) -> str:
    done = subprocess.run(
        ["docker", "exec", f"{NAME_PREFIX}{instance_id}", "sh", "-c", command],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


def _first_step_time(instance_id: int, run_dir: str, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = _exec(instance_id, f"head -n 1 {shlex.quote(run_dir)}/metrics.jsonl 2>/dev/null")
        if out.strip():
            return float(json.loads(out)["time"])
        time.sleep(0.05)
    raise SystemExit(f"no first step on instance {instance_id} within {timeout_s:g} s")


def _plain_rsync(src: Path, ssh: Ssh, target: SshTarget, dest: str) -> None:
    e = shlex.join([ssh.binary, *ssh.options(target)[:-1]])
    subprocess.run(
        ["rsync", "-a", "-e", e, f"{src}/", f"{target.user}@{target.host}:{dest}/"],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launches", type=int, default=3, help="rounds of (a)")
    parser.add_argument("--mb", type=int, default=256, help="dataset size for (b), MB")
    parser.add_argument("--rounds", type=int, default=5, help="alternating transfers for (b)")
    parser.add_argument("--image", default="runner-test/launch-dev:latest")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    info = json.loads(server.stdout.readline())
    if "error" in info:
        raise SystemExit(f"cannot run: {info['error']}")
    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    state = work / "state"
    os.environ.update(
        {
            "VAST_URL": info["url"],
            "VAST_API_KEY": info["key"],
            "XDG_STATE_HOME": str(state),
            "RUNNER_IMAGE": args.image,
        }
    )
    api = VastApi(info["key"], server_url=info["url"])  # pays the vastai import, untimed
    registry = Registry(state / "runner" / "registry.sqlite")
    ssh = Ssh(state / "runner" / "ssh" / "id_ed25519", known_hosts_dir=state / "runner" / "kh")
    runs = Runs(registry.path)
    spec = toy_job(work / "jobs")
    small = toy_dataset(work / "small", files=8, kib=128)
    rows: list[dict[str, float]] = []
    last: tuple[int, SshTarget] | None = None
    try:
        print(f"(a) launch to first step, {args.launches} rounds, image {args.image}")
        for i in range(args.launches):
            argv, env = spec.apply_overrides(["training.steps=20", "training.step_s=0.01"])
            launch = make_launch(
                spec,
                backend="vast",
                argv=argv,
                env=env,
                run_id=new_run_id("toy"),
                end_policy="keep",
            )
            times: dict[str, float] = {}
            t0 = time.time()
            record = launch_vast(
                launch,
                req=Requirements.from_spec(spec),
                dataset=small,
                secrets={},
                runs=runs,
                say=lambda line: None,
                client=api,
                registry=registry,
                ssh=ssh,
                timings=times,
            )
            assert record.instance_id is not None
            first = _first_step_time(record.instance_id, record.run_dir)
            host = _host_start_s(api, record.instance_id)
            wall = first - t0
            dataset = times.get("dataset", 0.0)
            own = wall - host - dataset
            rows.append({"wall": wall, "host": host, "dataset": dataset, "own": own, **times})
            print(
                f"  round {i + 1}: first step {wall:.2f} s after launch - host start {host:.2f} s"
                f" - dataset {dataset:.2f} s = runner {own:.2f} s (rent {times['rent']:.2f},"
                f" probe {times.get('rent_probe', 0):.2f}, prepare {times['prepare']:.2f},"
                f" agent start {times['agent']:.2f}, agent to first step"
                f" {first - t0 - sum(times.get(k, 0.0) for k in _PHASES):.2f})"
            )
            assert record.ssh_host and record.ssh_port
            target = SshTarget(record.ssh_host, record.ssh_port, name=f"vast-{record.instance_id}")
            if i < args.launches - 1:
                destroy(api, record.instance_id)
            else:
                last = (record.instance_id, target)
        owns = [r["own"] for r in rows]
        own_median = statistics.median(owns)
        print(
            f"  runner's own time: median {own_median:.2f} s (min {min(owns):.2f},"
            f" max {max(owns):.2f}); target <= {OVERHEAD_TARGET_S:g} s:"
            f" {own_median / OVERHEAD_TARGET_S:.2f} of target"
        )

        assert last is not None
        iid, target = last
        big = toy_dataset(work / "big", files=64, kib=args.mb * 1024 // 64)
        print(f"(b) sync {args.mb} MB (64 files) to instance {iid}, {args.rounds} rounds each")
        ratios, ours, plains = [], [], []
        for r in range(args.rounds):
            order = ("runner", "plain") if r % 2 == 0 else ("plain", "runner")
            took: dict[str, float] = {}
            for who in order:
                dest = f"/workspace/bench/{who}-{r}"
                t = time.perf_counter()
                if who == "runner":
                    sync_folder(big, ssh, target, dest)
                else:
                    _exec(iid, f"mkdir -p {dest}")
                    _plain_rsync(big, ssh, target, dest)
                took[who] = time.perf_counter() - t
                _exec(iid, f"rm -rf {dest}")
            ratios.append(took["plain"] / took["runner"])
            ours.append(took["runner"])
            plains.append(took["plain"])
            print(
                f"  round {r + 1}: runner {took['runner']:.2f} s"
                f" ({args.mb / took['runner']:.0f} MB/s), plain rsync {took['plain']:.2f} s"
                f" ({args.mb / took['plain']:.0f} MB/s), ratio {ratios[-1]:.3f}"
            )
        ratio = statistics.median(ratios)
        print(
            f"  throughput runner / plain rsync: median {ratio:.3f} (runner"
            f" {args.mb / statistics.median(ours):.0f} MB/s, plain"
            f" {args.mb / statistics.median(plains):.0f} MB/s); target >= {SYNC_TARGET:g}"
        )
        destroy(api, iid)
    finally:
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=120)


if __name__ == "__main__":
    main()
