"""runner's own time from ``rent`` to a verified host, and the probe alone, against a loopback
vast.ai whose host is ready the moment its container is.

    .venv/bin/python bench/bench_rent.py [--rents 3] [--probes 10]

Method. The loopback server (``tests/fakes/vast_server.py``) runs in a child process with one
clean offer (no boot delay, a fake GPU), so this process holds only runner. Each round:

1. ``rent()`` in this process (the library; the ``vastai`` import is paid once before timing)
   and then ``runner rent --disk 300`` as a fresh process (what a user pays: interpreter start,
   imports, then the same path).
2. The host's own start time is read back from the API: the instance's ``start_date`` (the
   create) and ``uptime_mins`` (time since it reached ``running``) give the span the server
   and Docker spent starting the container. runner's own time = wall - that span: search,
   create, registry, polling latency (the first poll interval is 0.5 s), SSH connection and the
   probe, verdict, and for the CLI start-up and output.
3. The CPU seconds of this process and its children (ssh, ssh-keygen) are reported beside it:
   waiting costs wall time, not CPU.

Then the probe alone: ``run_probe`` over SSH on the verified host ``--probes`` times (one ssh
round trip each: connection, ``python3 -`` start-up, the checks, the bounded Hub check).
Targets: runner's own time <= 5 s; the probe <= 2 s. Ratios are measured / target.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.cloud.offers import Requirements  # noqa: E402
from runner.cloud.probe import run_probe  # noqa: E402
from runner.cloud.provision import destroy, rent  # noqa: E402
from runner.cloud.registry import Registry  # noqa: E402
from runner.cloud.ssh import Ssh  # noqa: E402
from runner.cloud.vast import VastApi  # noqa: E402

RENT_TARGET_S = 5.0
PROBE_TARGET_S = 2.0

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


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _host_start_s(api: VastApi, instance_id: int) -> float:
    """Seconds the server spent from create to ``running`` (from the API's own fields)."""
    inst = api.show_instance(instance_id)
    assert inst is not None and inst.start_date is not None
    uptime_s = float(inst.raw.get("uptime_mins") or 0.0) * 60.0
    running_since = time.time() - uptime_s
    return running_since - inst.start_date


def _row(name: str, wall: float, host: float, cpu: float | None) -> dict[str, Any]:
    own = wall - host
    cpu_text = f", cpu {cpu:.2f} s" if cpu is not None else ""
    print(f"  {name}: wall {wall:.2f} s - host start {host:.2f} s = runner {own:.2f} s{cpu_text}")
    return {"wall": wall, "host": host, "own": own, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rents", type=int, default=3, help="rounds of rent (library + CLI)")
    parser.add_argument("--probes", type=int, default=10, help="probe runs on the last host")
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
    state = Path(tempfile.mkdtemp(prefix="bench-rent-"))
    env = {
        **os.environ,
        "VAST_URL": info["url"],
        "VAST_API_KEY": info["key"],
        "XDG_STATE_HOME": str(state),
        "HOME": str(state),
    }
    api = VastApi(info["key"], server_url=info["url"])  # pays the vastai import, untimed
    registry = Registry(state / "runner" / "registry.sqlite")
    ssh = Ssh(state / "runner" / "ssh" / "id_ed25519", known_hosts_dir=state / "runner" / "kh")
    lib: list[dict[str, Any]] = []
    cli: list[dict[str, Any]] = []
    last = None
    try:
        for i in range(args.rents):
            print(f"round {i + 1}/{args.rents}")
            cpu0, t0 = _cpu(), time.perf_counter()
            rental = rent(api, Requirements(disk_gb=300), registry=registry, ssh=ssh)
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
            lib.append(_row("rent()       ", wall, _host_start_s(api, rental.instance.id), cpu))
            if i == args.rents - 1:
                last = rental
                break
            destroy(api, rental.instance.id)

            t0 = time.perf_counter()
            done = subprocess.run(
                [str(Path(sys.executable).parent / "runner"), "rent", "--disk", "300", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise SystemExit(f"runner rent failed: {done.stderr.strip()}")
            iid = int(json.loads(done.stdout)["instance_id"])
            cli.append(_row("runner rent  ", wall, _host_start_s(api, iid), None))
            destroy(api, iid)

        assert last is not None
        probes = []
        for _ in range(args.probes):
            t0 = time.perf_counter()
            run_probe(ssh, last.target, paths=["/workspace"])
            probes.append(time.perf_counter() - t0)
        destroy(api, last.instance.id)
    finally:
        server.stdin.write("done\n")
        server.stdin.flush()
        server.wait(timeout=120)

    own = statistics.median(r["own"] for r in lib)
    cpu_median = statistics.median(r["cpu"] for r in lib)
    print(
        f"\nrent() to verified, runner's own time: median {own:.2f} s over {len(lib)} "
        f"(min {min(r['own'] for r in lib):.2f} s); target {RENT_TARGET_S:g} s: "
        f"ratio {own / RENT_TARGET_S:.2f}; CPU median {cpu_median:.2f} s"
    )
    if cli:
        cown = statistics.median(r["own"] for r in cli)
        print(
            f"runner rent (fresh process), runner's own time: median {cown:.2f} s over "
            f"{len(cli)}; target {RENT_TARGET_S:g} s: ratio {cown / RENT_TARGET_S:.2f}"
        )
    host = statistics.median(r["host"] for r in lib + cli)
    print(f"host start (server + Docker, subtracted): median {host:.2f} s")
    pm = statistics.median(probes)
    print(
        f"probe alone (one ssh round trip): median {pm:.3f} s, max {max(probes):.3f} s over "
        f"{len(probes)}; target {PROBE_TARGET_S:g} s: ratio {pm / PROBE_TARGET_S:.2f}"
    )


if __name__ == "__main__":
    main()
