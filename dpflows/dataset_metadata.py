"""A dataset's public facts: its window grid, privacy unit, bounds, accounting and rules; the file contract.

`DatasetMetadata` is what `metadata.json` holds (see dpflows.aggregates for the directory
layout); the bounds are the sensitivities of every count. Importable without OpenDP.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

import polars as pl

from dpflows.budget import ACCOUNTINGS, PURE_DP
from dpflows.cells import check_name
from dpflows.errors import InvalidData

#: 2: counts in one directory per window version (dpflows.window_files); 1: whole-dataset Parquet files
#: (read into each process's memory, still served; `dpflows admin upgrade-dataset` converts them).
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
AGGREGATE_FILES = ("cells.parquet", "trips.parquet", "presence.parquet")
PLACE_FILES = ("residents.parquet", "commuting.parquet")
MEASURES = ("trips", "presence")
#: Measures of one home and one work cell per person-window; each person adds at most 1 per window.
PLACE_MEASURES = ("residents", "commuting")
PLACES = ("home", "work")
#: presence_rule values: one cell per person-hour (written by ingestion now), every cell seen in a
#: person-hour (datasets written before issue 14), no presence at all (a trips table).
ONE_PLACE_PER_PERSON_HOUR = "one_place_per_person_hour"
CELLS_PER_PERSON_HOUR = "cells_per_person_hour"
NO_PRESENCE = "none"
PRESENCE_RULES = (ONE_PLACE_PER_PERSON_HOUR, CELLS_PER_PERSON_HOUR, NO_PRESENCE)
#: privacy units: one person within one window (events, or trips with a person column), or one trip
PERSON_WINDOW = "person-window"
TRIP = "trip"
UNITS = (PERSON_WINDOW, TRIP)
#: zCDP datasets show ρ as (ε, δ) at this δ unless ingestion sets another.
DEFAULT_DELTA = 1e-8

TRIPS_SCHEMA = {"day": pl.Date, "hour": pl.Int8, "origin": pl.String, "dest": pl.String, "count": pl.Int64}
PRESENCE_SCHEMA = {"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64}
CELLS_SCHEMA = {"cell_id": pl.String, "lat": pl.Float64, "lon": pl.Float64}
RESIDENTS_SCHEMA = {"window": pl.Int32, "place": pl.String, "cell": pl.String, "count": pl.Int64}
COMMUTING_SCHEMA = {"window": pl.Int32, "home": pl.String, "work": pl.String, "count": pl.Int64}


def check_time_zone(name: str) -> str:
    """An IANA time zone name (Europe/Paris, America/New_York, UTC), refused with the fix otherwise."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidData(f"time_zone={name!r} is not an IANA time zone; use a name such as Europe/Paris, "
                          "America/New_York or UTC", field="time_zone") from None
    return name


def _hours(span: tuple[int, int]) -> tuple[int, ...]:
    """[from, to) hours of day, wrapping past midnight (22, 6 is 22, 23, 0, ..., 5)."""
    start, stop = span
    return tuple(range(start, stop)) if start < stop else tuple(range(start, 24)) + tuple(range(0, stop))


@dataclass(frozen=True)
class PlaceRule:
    """How ingestion derives one home and one work cell per person-window; public, stored in metadata.

    Home: the cell where the person spent most `home_hours` (night, local time) of the window.
    Work: the cell of most `work_hours` on `work_weekdays`, among cells seen then on at least
    `min_work_days` distinct days of the window; none if that cell is the home. Hours are
    [from, to) and wrap past midnight; weekdays 0 = Monday. Both come from the person-window's
    hour cells (one place per person-hour), so a night crossing a window boundary is cut at it.
    """

    home_hours: tuple[int, int] = (22, 6)
    work_hours: tuple[int, int] = (9, 17)
    work_weekdays: tuple[int, ...] = (0, 1, 2, 3, 4)
    min_work_days: int = 3

    def __post_init__(self) -> None:
        for name, (start, stop) in (("home_hours", self.home_hours), ("work_hours", self.work_hours)):
            if not (0 <= start <= 23 and 1 <= stop <= 24) or start == stop:
                raise InvalidData(f"{name}={start}-{stop} must be FROM-TO with 0 <= FROM <= 23, 1 <= TO <= 24 and "
                                  "FROM != TO (TO exclusive, wrapping past midnight), such as 22-6", field=name)
        if not self.work_weekdays or any(not 0 <= d <= 6 for d in self.work_weekdays) \
                or tuple(sorted(set(self.work_weekdays))) != self.work_weekdays:
            raise InvalidData(f"work_weekdays={list(self.work_weekdays)} must be distinct sorted weekdays 0..6 "
                              "(0 = Monday), such as [0, 1, 2, 3, 4]", field="work_weekdays")
        if self.min_work_days < 1:
            raise InvalidData(f"min_work_days={self.min_work_days} must be at least 1", field="min_work_days")

    @property
    def home_hour_set(self) -> tuple[int, ...]:
        return _hours(self.home_hours)

    @property
    def work_hour_set(self) -> tuple[int, ...]:
        return _hours(self.work_hours)

    def _most_work_days(self, window_days: int) -> int:
        """The most work weekdays any window of `window_days` consecutive days holds."""
        return max(sum((start + d) % 7 in self.work_weekdays for d in range(window_days)) for start in range(7))

    def fitted(self, window_days: int) -> PlaceRule:
        """This rule with min_work_days lowered to what a window can hold (defaults for short windows)."""
        most = self._most_work_days(window_days)
        return self if self.min_work_days <= most else replace(self, min_work_days=max(1, most))

    def check_window(self, window_days: int) -> None:
        """Refuse a minimum of work days that no window of `window_days` days can hold."""
        most = self._most_work_days(window_days)
        if self.min_work_days > most:
            raise InvalidData(f"min_work_days={self.min_work_days} can never be met: a {window_days}-day window holds "
                              f"at most {most} of the work weekdays {list(self.work_weekdays)}; lower it",
                              field="min_work_days")

    def to_json(self) -> dict[str, Any]:
        return {
            "home": "cell of most night hours of the person-window (one place per person-hour); ties by keyed hash",
            "work": "cell of most weekday daytime hours among cells seen then on at least min_work_days days, "
                    "none if that is the home; ties by keyed hash",
            "home_hours": list(self.home_hours),
            "work_hours": list(self.work_hours),
            "work_weekdays": list(self.work_weekdays),
            "min_work_days": self.min_work_days,
            "bounds": {"residents": 1, "commuting": 1},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PlaceRule:
        home, work = doc["home_hours"], doc["work_hours"]
        return cls((int(home[0]), int(home[1])), (int(work[0]), int(work[1])),
                   tuple(int(d) for d in doc["work_weekdays"]), int(doc["min_work_days"]))


@dataclass(frozen=True)
class DatasetMetadata:
    """Public facts about a dataset; the bounds are the sensitivity of every count."""

    name: str
    first_day: dt.date
    end_day: dt.date  # exclusive
    window_days: int
    bound_trips: int
    bound_presence: int
    trip_rule: dict[str, Any] = field(default_factory=dict)
    #: pure_dp (discrete Laplace, ε) or zcdp (discrete Gaussian, ρ); see dpflows.mechanisms.
    accounting: str = PURE_DP
    #: zcdp only: the most one person adds to one trips row (day, hour, origin, dest), enforced
    #: at ingestion; presence rows are distinct person-hours, so 1 by construction.
    key_cap_trips: int = 1
    #: zcdp only: the δ at which ρ is shown as (ε, δ); for display, never for accounting.
    delta: float = DEFAULT_DELTA
    #: what a presence record is (PRESENCE_RULES); ingestion writes one place per person-hour.
    presence_rule: str = CELLS_PER_PERSON_HOUR
    #: how homes and work cells were derived; None: no residents or commuting in this dataset.
    places: PlaceRule | None = None
    #: the privacy unit: one person within one window, or one trip (a trips table without persons)
    unit: str = PERSON_WINDOW
    #: days inside [first_day, end_day) the admin declares the dataset does not hold (never measured)
    missing_days: tuple[dt.date, ...] = ()
    #: the IANA time zone whose local dates and hours the counts use (declared); None: not declared,
    #: hours as the timestamps gave them (naive wall times, or UTC for instants), datasets written before
    time_zone: str | None = None
    #: the population it is drawn from (`dpflows ingest --population`), whose budget it shares with every
    #: dataset of the same people; None: the data root's default population (dpflows.ledger.DEFAULT_POPULATION)
    population: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, field="dataset")
        if self.window_days < 1:
            raise InvalidData(f"window_days={self.window_days} must be at least 1")
        if self.end_day <= self.first_day:
            raise InvalidData(f"end_day={self.end_day} must be after first_day={self.first_day}")
        for measure, bound in (("trips", self.bound_trips), ("presence", self.bound_presence)):
            if bound < 1:
                raise InvalidData(f"bound for {measure}={bound} must be at least 1")
        if self.accounting not in ACCOUNTINGS:
            raise InvalidData(f"accounting={self.accounting!r} must be one of {list(ACCOUNTINGS)}")
        if self.key_cap_trips < 1:
            raise InvalidData(f"key_cap_trips={self.key_cap_trips} must be at least 1")
        if not 0 < self.delta < 1:
            raise InvalidData(f"delta={self.delta} must be in (0, 1), such as 1e-8")
        if any(not self.first_day <= d < self.end_day for d in self.missing_days):
            raise InvalidData("missing_days must fall inside [first_day, end_day)")
        if len(self.missing_days) >= (self.end_day - self.first_day).days:
            raise InvalidData("a dataset must hold at least one day; check --days")
        if self.unit not in UNITS:
            raise InvalidData(f"unit={self.unit!r} must be one of {list(UNITS)}")
        if self.presence_rule not in PRESENCE_RULES:
            raise InvalidData(f"presence_rule={self.presence_rule!r} must be one of {list(PRESENCE_RULES)}")
        if self.places is not None:
            self.places.check_window(self.window_days)
        if self.time_zone is not None:
            check_time_zone(self.time_zone)
        if self.population is not None:
            check_name(self.population, field="population")

    def bound(self, measure: str) -> int:
        """The most one person-window adds to all counts of `measure` (residents: of one place)."""
        if measure in PLACE_MEASURES:
            return 1
        return self.bound_trips if measure == "trips" else self.bound_presence

    def key_cap(self, measure: str) -> int:
        """The most one person adds to one aggregate row of `measure` in a window (zCDP's per-key cap)."""
        return self.key_cap_trips if measure == "trips" else 1

    @property
    def one_place_per_hour(self) -> bool:
        """A person has at most one presence record per (day, hour): presence counts people."""
        return self.presence_rule == ONE_PLACE_PER_PERSON_HOUR

    @property
    def files(self) -> tuple[str, ...]:
        """The aggregate files a version of this dataset holds (hashed in metadata ``files``)."""
        return AGGREGATE_FILES + (PLACE_FILES if self.places is not None else ())

    def accounting_json(self) -> dict[str, Any]:
        from dpflows.accounting import accounting

        return accounting(self.accounting).metadata_json(self)

    @property
    def privacy_unit(self) -> str:
        """What one guarantee protects, as every answer states it: a fact of the dataset, never assumed."""
        if self.unit == TRIP:
            return "trip"
        days = self.window_days
        return f"person-window ({days} day{'s' if days != 1 else ''})"

    def window_of(self, day: dt.date) -> int:
        """Windows are aligned to the dataset's first day: window k covers days [k·w, (k+1)·w)."""
        return (day - self.first_day).days // self.window_days

    def window_start(self, window: int) -> dt.date:
        return self.first_day + dt.timedelta(days=window * self.window_days)

    @property
    def window_count(self) -> int:
        return self.window_of(self.end_day - dt.timedelta(days=1)) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "first_day": self.first_day.isoformat(),
            "end_day": self.end_day.isoformat(),
            "window_days": self.window_days,
            "bounds": {"trips": self.bound_trips, "presence": self.bound_presence},
            "trip_rule": self.trip_rule,
            "presence_rule": {"kind": self.presence_rule},
            "privacy_unit": {"kind": self.unit},
            **({"coverage": {"missing_days": [d.isoformat() for d in self.missing_days]}}
               if self.missing_days else {}),
            **({"places": self.places.to_json()} if self.places is not None else {}),
            **({"time_zone": {"name": self.time_zone, "hours": "local; a 23-hour day has no record in the hour "
                              "skipped, a 25-hour day counts both of its repeated hours in that hour"}}
               if self.time_zone is not None else {}),
            "accounting": self.accounting_json(),
            **({"population": {"name": self.population}} if self.population is not None else {}),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DatasetMetadata:
        if doc.get("format_version") not in READABLE_FORMATS:
            raise InvalidData(f"metadata format_version={doc.get('format_version')!r}; expected one of "
                              f"{list(READABLE_FORMATS)} (a newer dpflows wrote it: upgrade dpflows)")
        accounting = doc.get("accounting") or {}  # absent in datasets written before zCDP: pure DP
        return cls(
            name=doc["name"],
            first_day=dt.date.fromisoformat(doc["first_day"]),
            end_day=dt.date.fromisoformat(doc["end_day"]),
            window_days=int(doc["window_days"]),
            bound_trips=int(doc["bounds"]["trips"]),
            bound_presence=int(doc["bounds"]["presence"]),
            trip_rule=dict(doc.get("trip_rule", {})),
            accounting=str(accounting.get("measure", PURE_DP)),
            key_cap_trips=int(accounting.get("key_caps", {}).get("trips", 1)),
            delta=float(accounting.get("delta", DEFAULT_DELTA)),
            # absent in datasets written before one place per person-hour: every cell of an hour
            presence_rule=str(doc.get("presence_rule", {}).get("kind", CELLS_PER_PERSON_HOUR)),
            places=PlaceRule.from_json(doc["places"]) if "places" in doc else None,
            # absent in datasets written before the unit was recorded: they were ingested per person
            unit=str(doc.get("privacy_unit", {}).get("kind", PERSON_WINDOW)),
            missing_days=tuple(dt.date.fromisoformat(d) for d in doc.get("coverage", {}).get("missing_days", [])),
            time_zone=doc["time_zone"]["name"] if "time_zone" in doc else None,
            # absent in datasets written before populations, and when ingested without --population
            population=doc["population"]["name"] if "population" in doc else None,
        )

    def holds(self, day: dt.date) -> bool:
        """The admin declared this day part of the dataset (inside the span and not declared missing)."""
        return self.first_day <= day < self.end_day and day not in self.missing_days
