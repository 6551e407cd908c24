"""A schedule's ``timezone``: an IANA name read with :mod:`zoneinfo` (``_schedules``).

A zone is stored by its name and read again by whichever process runs the schedule: a
restart, a standby taking over, a daemon on another host. So a new schedule may not
name ``"localtime"``: zoneinfo reads that as the zone file of the machine it runs on
(``/etc/localtime`` on Debian), and the same stored schedule would fire at other times
on a host in another zone.
"""

from __future__ import annotations

import datetime
import os
import zoneinfo

from herder.store import InvalidInput


def zone_of(name: str, timezone: object) -> datetime.tzinfo:
    """The zone of schedule ``name``, stored or new; :class:`InvalidInput` if unknown.
    UTC needs no time zone data: a host without any (an Alpine image without tzdata; PyPI's
    ``tzdata`` is no dependency) takes UTC schedules, ``every=`` ones included."""
    if not isinstance(timezone, str):
        raise InvalidInput(f"schedule {name!r}: timezone must be a str such as 'Europe/Riga'")
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # ('America': a folder)
        if timezone == "UTC":
            return datetime.UTC
        hint = "use an IANA name such as 'UTC' or 'America/New_York'"
        try:
            zoneinfo.ZoneInfo("UTC")
        except zoneinfo.ZoneInfoNotFoundError:  # (not even UTC's: no time zone data at all)
            hint = "this machine has no time zone data: pip install tzdata (or the system's)"
        raise InvalidInput(f"schedule {name!r}: unknown timezone {timezone!r}; {hint}") from None


def new_zone(name: str, timezone: object) -> str:
    """The name to store of a new schedule's zone (:func:`zone_of`), which may not be
    this machine's own zone."""
    zone = zone_of(name, timezone)
    key = getattr(zone, "key", "UTC")  # (a ZoneInfo's, or UTC's without time zone data)
    if key.rpartition("/")[2] == "localtime":  # (posix/localtime, where it is one)
        _, found, here = os.path.realpath("/etc/localtime").partition("/zoneinfo/")
        raise InvalidInput(
            f"schedule {name!r}: timezone {timezone!r} is the zone of whichever machine "
            "runs the schedule, so the same schedule would fire at other times after a "
            "move to a host in another zone; give the IANA name of the zone you mean"
            + (f" (this machine's is {here!r})" if found and here else ", such as 'Europe/Riga'")
        )
    return key
