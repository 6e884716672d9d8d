"""Time zones of appointments: a zone name as Exchange, Microsoft 365 or the CRM gives
it → a `zoneinfo.ZoneInfo`, and the Windows name Exchange and Graph write.

Pure. Servers name zones three ways: IANA names ("Europe/Berlin"), UTC in several
spellings, and Windows names ("W. Europe Standard Time", "Pacific Standard Time":
what EWS and Graph use by default, e.g. Graph's `originalStartTimeZone` and
`recurrenceTimeZone`). Windows and IANA names are translated with exchangelib's own
map of the Unicode CLDR table (`exchangelib.winzone`: MS_TIMEZONE_TO_IANA_MAP and
IANA_TO_MS_TIMEZONE_MAP), the one exchangelib itself uses for EWS, so the readers and
the writers of both protocols agree with it. Payloads carry the IANA name
(`Appointment.time_zone`, `Recurrence.time_zone`); "" means the item named no zone.

A name that is none of these (a custom zone such as Graph's
"tzone://Microsoft/Custom", a typo) raises `UnknownTimeZone`, whose message says
which name and what is accepted: the readers report the item unreadable with it,
the writers fail the write with it. Nothing falls back silently.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import rrule as du_rrule
from exchangelib.winzone import IANA_TO_MS_TIMEZONE_MAP, MS_TIMEZONE_TO_IANA_MAP

from schemas.act import Appointment

UTC_NAME = "UTC"
"""How payloads and writes spell UTC (IANA and Windows agree on this one)."""
_UTC_ALIASES = frozenset(
    {
        "utc",
        "z",
        "gmt",
        "uct",
        "zulu",
        "universal",
        "etc/utc",
        "etc/uct",
        "etc/gmt",
        "etc/gmt0",
        "etc/gmt+0",
        "etc/gmt-0",
        "etc/zulu",
        "etc/universal",
        "tzone://microsoft/utc",
        "coordinated universal time",
        "(utc) coordinated universal time",
    }
)
"""Spellings of UTC servers use (Graph writes "UTC", EWS "UTC" or "tzone://Microsoft/Utc")."""


class UnknownTimeZone(ValueError):
    """A zone name that is neither UTC, an IANA name nor a Windows name the CLDR map
    knows (the message names it; it never holds anything secret)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"time zone {name!r} is not UTC, an IANA name or a Windows zone name "
            "(exchangelib's CLDR map)"
        )
        self.name = name


@cache
def _windows_by_lower() -> dict[str, str]:
    """MS_TIMEZONE_TO_IANA_MAP keyed case-insensitively (servers vary the case)."""
    return {ms.lower(): iana for ms, iana in MS_TIMEZONE_TO_IANA_MAP.items()}


@cache
def iana_name(name: str) -> str:
    """The IANA name of a zone named `name` (IANA, UTC or Windows): "UTC" for every
    spelling of UTC, "" for "" (no zone). UnknownTimeZone for anything else."""
    text = name.strip()
    if not text:
        return ""
    if text.lower() in _UTC_ALIASES:
        return UTC_NAME
    windows = _windows_by_lower().get(text.lower())
    if windows is not None:
        return UTC_NAME if windows.lower() in _UTC_ALIASES else windows
    try:
        return ZoneInfo(text).key
    except (ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZone(name) from None


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo of `name` (see `iana_name`); "" is UTC (an item without a zone is
    written and expanded in UTC). UnknownTimeZone for an unknown name."""
    return ZoneInfo(iana_name(name) or UTC_NAME)


def windows_name(name: str) -> str:
    """The Windows zone name Exchange and Graph write for `name` (IANA, UTC or
    Windows; "" is UTC). UnknownTimeZone when the CLDR map has no Windows zone for it."""
    iana = iana_name(name) or UTC_NAME
    if iana == UTC_NAME:
        return UTC_NAME
    found = IANA_TO_MS_TIMEZONE_MAP.get(iana)
    if found is None:
        raise UnknownTimeZone(name)
    return str(found[0])


def local(moment: datetime, where: ZoneInfo) -> datetime:
    """An aware moment as the naive wall-clock time it is in `where`."""
    return moment.astimezone(where).replace(tzinfo=None)


def at_local(wall: datetime, where: ZoneInfo) -> datetime:
    """A naive wall-clock time in `where` as an aware UTC moment (a time a
    daylight-saving change skips or repeats resolves as zoneinfo's fold=0 does)."""
    return wall.replace(tzinfo=where).astimezone(UTC)


def local_midnight(day: date, where: ZoneInfo) -> datetime:
    """Midnight at the start of `day` in `where`, as an aware UTC moment."""
    return at_local(datetime.combine(day, time()), where)


def all_day_span(first: date, last: date, where: ZoneInfo) -> tuple[datetime, datetime]:
    """The (start, exclusive end) in UTC of an all-day item running from `first` to
    `last` (inclusive) in `where`: midnight to the midnight after `last`."""
    return local_midnight(first, where), local_midnight(last + timedelta(days=1), where)


def series_zone(series: Appointment) -> ZoneInfo:
    """The zone a series' pattern is evaluated in: its recurrence's zone, else the
    appointment's, else UTC. UnknownTimeZone for an unknown name."""
    rec = series.recurrence
    return zone((rec.time_zone if rec is not None else "") or series.time_zone)


def series_starts(
    series: Appointment,
    low: datetime | None = None,
    high: datetime | None = None,
    limit: int = 2000,
) -> list[datetime]:
    """The starts (aware UTC) of a series' occurrences by its pattern, in [low, high)
    when given, at most `limit`: the pattern is expanded in the series' zone
    (`series_zone`) at the wall-clock time its first occurrence has there, so every
    occurrence keeps that local time across daylight-saving changes (as Exchange and
    Graph expand a series). An end date includes its whole last day. [] for a
    single item."""
    rec = series.recurrence
    if rec is None:
        return []
    where = series_zone(series)
    first = datetime.combine(rec.start_date, local(series.start, where).time())
    rule = du_rrule.rrulestr(rec.rrule, dtstart=first)
    assert isinstance(rule, du_rrule.rrule)
    if rec.count is not None:
        rule = rule.replace(count=rec.count)
    elif rec.end_date is not None:
        rule = rule.replace(until=datetime.combine(rec.end_date, time(23, 59, 59)))
    out: list[datetime] = []
    for wall in rule:
        at = at_local(wall, where)
        if high is not None and at >= high:
            break
        if low is None or at >= low:
            out.append(at)
        if len(out) >= limit:
            break
    return out


__all__ = [
    "UTC_NAME",
    "UnknownTimeZone",
    "all_day_span",
    "at_local",
    "iana_name",
    "local",
    "local_midnight",
    "series_starts",
    "series_zone",
    "windows_name",
    "zone",
]
