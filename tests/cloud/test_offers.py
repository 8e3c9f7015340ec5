"""Search filters, ranking by performance per dollar, explain, and which filter emptied the list."""

from __future__ import annotations

import pytest

from runner.cloud.offers import NoOffersError, Requirements, explain, rank, search
from runner.cloud.vast import CloudError, Offer
from runner.spec import load_job
from tests.cloud import api_for
from tests.cloud import vast_fixture as vast_fixture
from tests.fakes.vast_server import VastServer


def _offer(oid: int, **fields: object) -> Offer:
    raw: dict[str, object] = {
        "id": oid,
        "machine_id": 100 + oid,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "disk_space": 500,
        "dph_total": 0.5,
        "reliability2": 0.99,
        "dlperf": 50.0,
        "total_flops": 80.0,
        "geolocation": "Ohio, US",
        "hosting_type": 0,
        "verification": "verified",
    }
    raw.update(fields)
    return Offer.from_api(raw)


def test_rank_is_perf_per_dollar_times_reliability() -> None:
    offers = [
        _offer(1, dlperf=60, dph_total=0.6, reliability2=0.99),  # 100/h x .99 = 99.0
        _offer(2, dlperf=60, dph_total=0.5, reliability2=0.90),  # 120/h x .90 = 108.0
        _offer(3, dlperf=None, total_flops=100, dph_total=1.0),  # flops: 100 x .99 = 99.0
        _offer(4, dlperf=None, total_flops=None, dph_total=0.1),  # unknown perf: last
        _offer(5, dlperf=60, dph_total=0.6, reliability2=0.99, gpu_name="RTX 3090"),
    ]
    ranking = rank(offers, Requirements(gpu_name="RTX_4090", min_reliability=0.8))
    assert [r.offer.id for r in ranking.ranked] == [2, 1, 3, 4]
    assert [round(r.score, 3) for r in ranking.ranked] == [108.0, 99.0, 99.0, 0.0]
    assert ranking.ranked[2].perf_kind == "total_flops" and ranking.ranked[3].perf_kind == "none"
    assert ranking.skipped == ((offers[4], "fails gpu_name = RTX 4090"),)


def test_explain_says_why_the_top_offer_won() -> None:
    offers = [_offer(1, dlperf=60, dph_total=0.5), _offer(2, dlperf=50, dph_total=0.6)]
    ranking = rank(offers, Requirements(), bad_machines={999: "x"})
    assert explain(ranking) == [
        "offer 1 (1x RTX 4090 24 GB, Ohio, US, machine 101, $0.500/h) wins with score 118.8:",
        "  dlperf 60.0 for $0.500/h = 120.0 per $/h, x reliability 0.990",
        "  next: offer 2 (1x RTX 4090 24 GB, Ohio, US, machine 102, $0.600/h) scores 82.5 "
        "(31% lower: $0.100/h dearer, 10.0 less dlperf)",
        "  score = perf / dph_total x reliability (perf: dlperf, else total_flops)",
    ]


def test_bad_machines_are_left_out_and_said_so() -> None:
    offers = [_offer(1, dph_total=0.3), _offer(2)]
    ranking = rank(offers, Requirements(), bad_machines={101: "/workspace: 50 GB overlay"})
    assert [r.offer.id for r in ranking.ranked] == [2]
    assert ranking.skipped[0][1] == "machine 101 is marked bad: /workspace: 50 GB overlay"
    assert explain(ranking)[-2] == "  left out: 1 offer(s), 1 on machines marked bad"


def test_search_sends_the_filters_and_checks_them_again(vast: VastServer) -> None:
    dc = vast.add_offer(hosting_type=1, geolocation="Bavaria, DE", dph_total=0.7)["id"]
    vast.add_offer(hosting_type=0, geolocation="Bavaria, DE", dph_total=0.4)
    vast.add_offer(hosting_type=1, geolocation="Texas, US", dph_total=0.4)
    api = api_for(vast)
    req = Requirements(disk_gb=300, datacenter=True, region="europe", min_cuda=12.4)
    ranking = search(api, req)
    # The fake ignores "datacenter" (not an offer field): runner's own check still applies.
    assert [r.offer.id for r in ranking.ranked] == [dc]
    sent = next(r.body for r in vast.requests if r.path.startswith("/api/v0/bundles"))
    assert sent["disk_space"] == {"gte": 300} and sent["allocated_storage"] == 300
    assert sent["num_gpus"] == {"eq": 1} and sent["cuda_max_good"] == {"gte": 12.4}
    assert sent["verified"] == {"eq": True} and sent["rentable"] == {"eq": True}
    assert sent["order"] == [["dlperf_per_dphtotal", "desc"]]
    assert "DE" in sent["geolocation"]["in"] and sent["datacenter"] == {"eq": True}


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (
            Requirements(disk_gb=3000),
            "no offer matches --disk (disk_space >= 3000 GB): 3 rentable offers, none of them has "
            "disk_space >= 3000 GB (the most is 800 GB)",
        ),
        (
            Requirements(disk_gb=300, gpu_name="H100_SXM"),
            "no offer matches --gpu (gpu_name = H100 SXM): 3 rentable offers, 2 with disk_space "
            ">= 300 GB, none of them has gpu_name = H100 SXM (there are RTX 4090); 1 offer(s) "
            "with gpu_name = H100 SXM fail disk_space >= 300 GB",
        ),
        (
            Requirements(disk_gb=300, max_price=0.2),
            "no offer matches --max-price (dph_total <= $0.2/h): 3 rentable offers, 2 with "
            "disk_space >= 300 GB, 2 with num_gpus = 1, 2 with reliability >= 0.95, none of them "
            "has dph_total <= $0.2/h (the cheapest is $0.561/h)",
        ),
        (
            Requirements(disk_gb=300, min_gpu_memory_gb=80),
            "no offer matches --min-gpu-mem (gpu_ram >= 80 GB): 3 rentable offers, 2 with "
            "disk_space >= 300 GB, 2 with num_gpus = 1, none of them has gpu_ram >= 80 GB (the "
            "most is 24 GB per GPU); 1 offer(s) with gpu_ram >= 80 GB fail disk_space >= 300 GB",
        ),
    ],
)
def test_no_offers_names_the_filter_that_emptied_the_list(
    vast: VastServer, req: Requirements, message: str
) -> None:
    vast.add_offer(dph_total=0.5, disk_space=500)
    vast.add_offer(dph_total=0.5, disk_space=800)
    vast.add_offer(gpu_name="H100 SXM", gpu_ram=81559, dph_total=2.5, disk_space=200)
    with pytest.raises(NoOffersError) as exc:
        search(api_for(vast), req)
    assert str(exc.value) == message


def test_no_offers_at_all(vast: VastServer) -> None:
    with pytest.raises(NoOffersError) as exc:
        search(api_for(vast), Requirements())
    assert (
        str(exc.value) == "no offer matches, and vast.ai lists no rentable offer at all right now"
    )


def test_requirements_from_a_job_and_regions() -> None:
    req = Requirements.from_spec(load_job("robomimic_can"), max_price=3.0, gpus=None)
    assert (req.gpus, req.min_gpu_memory_gb, req.disk_gb) == (2, 24, 200)
    assert (req.shm_gb, req.ram_gb, req.max_price) == (32, 64, 3.0)
    assert Requirements(region="NA").countries() == ("US", "CA")
    assert Requirements(region="de, fr").countries() == ("DE", "FR")
    with pytest.raises(CloudError, match=r"--region 'Mars': use a continent"):
        Requirements(region="Mars").countries()
