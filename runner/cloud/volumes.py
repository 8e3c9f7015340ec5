"""Persistent volumes: list, create, delete (and, through :func:`~runner.cloud.provision.rent`,
attach).

A vast.ai local volume has a fixed size, lives on one machine, survives instance destroy, and
attaches to one instance at a time, only on its own machine. So:

- :func:`create` puts a new volume on the machine of the best offer matching the requirements
  (that offer's ``avail_vol_ask_id``), so a GPU there can be rented with it later;
- renting with ``--storage ID`` restricts the search to the volume's machine and mounts it at
  the mount path (default ``/storage``, where users keep checkpoints); ``--create-storage SIZE``
  creates one with the instance instead (deleted again if that instance fails verification).
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.cloud.offers import Requirements, search
from runner.cloud.vast import ApiError, CloudError, Offer, VastClient, Volume

__all__ = ["DEFAULT_MOUNT", "CreatedVolume", "create", "delete", "get", "list_volumes"]

#: Where a volume is mounted unless told otherwise (the users' convention).
DEFAULT_MOUNT = "/storage"


@dataclass(frozen=True)
class CreatedVolume:
    """A new volume and the offer whose machine it lives on."""

    volume: Volume
    offer: Offer


def list_volumes(client: VastClient) -> list[Volume]:
    """The account's volumes, by id."""
    return sorted(client.list_volumes(), key=lambda v: v.id)


def get(client: VastClient, volume_id: int) -> Volume:
    """One volume; :class:`CloudError` naming ``runner storage list`` when there is none."""
    for vol in client.list_volumes():
        if vol.id == volume_id:
            return vol
    raise CloudError(f"no volume {volume_id} on this account; `runner storage list` shows them")


def create(
    client: VastClient,
    size_gb: float,
    req: Requirements,
    *,
    name: str | None = None,
    bad_machines: dict[int, str] | None = None,
) -> CreatedVolume:
    """Create a ``size_gb`` volume on the machine of the best offer for ``req``.

    Raises :class:`~runner.cloud.offers.NoOffersError` when no offer matches (or none has room
    for the volume), :class:`CloudError` on API failures.
    """
    if size_gb <= 0:
        raise CloudError(f"volume size {size_gb:g} GB: it must be positive")
    ranking = search(client, req, bad_machines=bad_machines)
    roomy = [
        r.offer
        for r in ranking.ranked
        if r.offer.avail_vol_ask_id is not None and (r.offer.avail_vol_size or 0) >= size_gb
    ]
    if not roomy:
        most = max((r.offer.avail_vol_size or 0 for r in ranking.ranked), default=0)
        raise CloudError(
            f"no machine matching the filters has room for a {size_gb:g} GB volume "
            f"(the most offered is {most:g} GB)"
        )
    offer = roomy[0]
    ask = offer.avail_vol_ask_id
    assert ask is not None
    volume_id = client.create_volume(ask, size_gb, name)
    vol = next((v for v in client.list_volumes() if v.id == volume_id), None)
    if vol is None:
        vol = Volume(
            id=volume_id,
            name=name,
            size_gb=size_gb,
            machine_id=offer.machine_id,
            status=None,
            instances=(),
            dph_total=None,
            start_date=None,
            geolocation=offer.geolocation,
            raw={},
        )
    return CreatedVolume(vol, offer)


def delete(client: VastClient, volume_id: int) -> None:
    """Delete a volume (its data is gone); one clear line when an instance still uses it."""
    try:
        client.delete_volume(volume_id)
    except ApiError as exc:
        if exc.code == "volume_in_use":
            raise CloudError(
                f"volume {volume_id} is in use; destroy its instance first (`runner ps`, "
                "`runner down ID`)"
            ) from None
        if exc.code == "no_such_volume":
            raise CloudError(
                f"no volume {volume_id} on this account; `runner storage list` shows them"
            ) from None
        raise
