"""What one ingestion is asked to do: one frozen, checked record shared by the CLI and every engine.

The CLI builds it once from its flags (`dpflows.cli.data_commands.ingest_options`), the Python
API builds it directly, and the engines (`pipeline.ingest_events`, `pipeline.ingest_trips_table`,
`spark.ingest_events_spark`) read it; none of them re-checks or forwards its fields one by one.
Adding an option is one field here (with its default and check) plus its CLI flag, named as the
field, which the CLI copies over by name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dpflows.aggregates import (
    DEFAULT_DELTA,
    NO_PRESENCE,
    ONE_PLACE_PER_PERSON_HOUR,
    PERSON_WINDOW,
    TRIP,
    DatasetMetadata,
    PlaceRule,
)
from dpflows.budget import PURE_DP, Epsilon
from dpflows.errors import InvalidData
from dpflows.ingest.bounding import new_seed
from dpflows.ingest.contribution_histograms import DEFAULT_REPORT_EPSILON, parse_report_epsilon
from dpflows.ingest.derive import TRIP_RULES
from dpflows.ingest.inputs import ZoningSpec, check_declared_span

DEFAULT_BOUND_TRIPS = 20
# One place per person-hour caps a person-week at 168 records; on the demo city (20,000 persons,
# 4 weeks) 60 keeps every ordinary person-week whole and thins only the heavy users (0.56% of
# person-weeks, 0.6% of presence-hours dropped). It binds only queries covering more than 60
# day-hour slots of a window (their sensitivity is min(L, S)); see the commit that set it.
DEFAULT_BOUND_PRESENCE = 60
DEFAULT_WINDOW_DAYS = 7
#: The home and work rule's defaults (documented in docs/admin.md): nights 22:00-06:00, work
#: 09:00-17:00 Monday to Friday on at least 3 days of the window.
DEFAULT_PLACES = PlaceRule()
#: events: (person, timestamp, cell_id); trips: a ready-made trips table; citibike: published trip files
INPUT_FORMATS = ("events", "trips", "citibike")
ENGINES = ("polars", "spark")


def place_rule(places: PlaceRule | None, window_days: int) -> PlaceRule:
    """An ingestion's home and work rule: the one given, checked against the window, or the default fitted to it."""
    if places is None:
        return DEFAULT_PLACES.fitted(window_days)
    places.check_window(window_days)
    return places


@dataclass(frozen=True)
class IngestOptions:
    """Everything an ingestion is told besides its file paths; checked once, when made.

    `bound_trips` None is the unit's default (DEFAULT_BOUND_TRIPS per person-window, 1 when each
    trip is its own unit); `seed` None draws a fresh secret seed per ingestion; `buckets` None
    chooses from the input size; `places` None is DEFAULT_PLACES fitted to the window.
    """

    name: str
    first_day: dt.date | None = None
    end_day: dt.date | None = None  # exclusive
    #: days inside [first_day, end_day) the input does not hold (declared, never measured)
    missing_days: Sequence[dt.date] = ()
    window_days: int = DEFAULT_WINDOW_DAYS
    bound_trips: int | None = None
    bound_presence: int = DEFAULT_BOUND_PRESENCE
    trip_rule: str = "stay"
    min_dwell_minutes: float = 30
    places: PlaceRule | None = None
    zonings: Sequence[ZoningSpec] = ()
    seed: int | None = None
    buckets: int | None = None
    report_epsilon: str | float | Epsilon = DEFAULT_REPORT_EPSILON
    accounting: str = PURE_DP
    key_cap_trips: int = 1
    delta: float = DEFAULT_DELTA
    input_format: str = "events"
    #: the IANA time zone of the dataset: local dates and hours (instants are converted to it); see DatasetMetadata
    time_zone: str | None = None
    #: add the complete windows after the served ones to the dataset at the output (dpflows.ingest.appending)
    append: bool = False
    #: with append: publish a trailing incomplete window with the days given instead of holding it
    close_window: bool = False
    #: the people this data is drawn from: datasets of one population share its budget (issue 17);
    #: None: the data root's default population, shared by every dataset ingested without one
    population: str | None = None

    def __post_init__(self) -> None:
        check_declared_span(self.first_day, self.end_day)
        object.__setattr__(self, "missing_days", tuple(sorted(set(self.missing_days))))
        object.__setattr__(self, "zonings", tuple(self.zonings))
        object.__setattr__(self, "report_epsilon", parse_report_epsilon(self.report_epsilon))
        if self.input_format not in INPUT_FORMATS:
            raise InvalidData(f"input_format={self.input_format!r} must be one of {list(INPUT_FORMATS)}",
                              field="input_format")
        if self.trip_rule not in TRIP_RULES:
            raise InvalidData(f"trip_rule={self.trip_rule!r} must be one of {list(TRIP_RULES)}", field="trip_rule")
        if self.buckets is not None and self.trips_table:
            raise InvalidData("--buckets applies to events ingested with --engine polars; drop it here",
                              field="buckets")
        if self.buckets is not None and self.buckets < 1:
            raise InvalidData(f"buckets={self.buckets} must be at least 1; omit it to choose from the input size",
                              field="buckets")
        if self.places is not None and self.trips_table:
            raise InvalidData("--home-hours, --work-hours and --min-work-days apply to events; a trips table has no "
                              "homes or work places: drop them here", field="home_hours")
        if self.close_window and not self.append:
            raise InvalidData("--close-window applies to --append (it publishes the last, incomplete window of an "
                              "append); drop it", field="close_window")
        # the dataset's own checks (name, window, bounds, accounting, δ, days, time zone), before any file is read
        if self.trips_table:
            self.trips_metadata(per_person=True)
        else:
            self.events_metadata()

    @property
    def trips_table(self) -> bool:
        """The input is trips already (no presence, homes or work places), not events."""
        return self.input_format != "events"

    @property
    def report_budget(self) -> Epsilon:
        """The bounding report's ε (0: no report)."""
        assert isinstance(self.report_epsilon, Epsilon)  # parsed when made
        return self.report_epsilon

    @property
    def span(self) -> tuple[dt.date, dt.date]:
        """The declared [first_day, end_day)."""
        assert self.first_day is not None and self.end_day is not None  # checked when made
        return self.first_day, self.end_day

    @property
    def place_rule(self) -> PlaceRule:
        """The home and work rule in force: the one given or the default fitted to the window."""
        return place_rule(self.places, self.window_days)

    def trips_bound(self, *, per_person: bool = True) -> int:
        """L_trips: the one given, or the unit's default (each trip its own unit: 1, exact)."""
        if self.bound_trips is not None:
            return self.bound_trips
        return DEFAULT_BOUND_TRIPS if per_person else 1

    def drawn_seed(self) -> int:
        """The bounding's secret seed: the one given, else a fresh one for this ingestion."""
        return new_seed() if self.seed is None else self.seed

    def trip_rule_json(self) -> dict[str, Any]:
        """How trips were derived from events, as the dataset's metadata states it."""
        rule: dict[str, Any] = {"kind": self.trip_rule}
        if self.trip_rule == "stay":
            rule["min_dwell_minutes"] = self.min_dwell_minutes
        return rule

    def events_metadata(self) -> DatasetMetadata:
        """The public facts of a dataset ingested from events by these options."""
        first_day, end_day = self.span
        return DatasetMetadata(self.name, first_day, end_day, self.window_days, self.trips_bound(),
                               self.bound_presence, self.trip_rule_json(), self.accounting, self.key_cap_trips,
                               self.delta, ONE_PLACE_PER_PERSON_HOUR, self.place_rule,
                               missing_days=tuple(self.missing_days), time_zone=self.time_zone,
                               population=self.population)

    def trips_metadata(self, *, per_person: bool) -> DatasetMetadata:
        """The public facts of a dataset ingested from a trips table (with or without a person column)."""
        first_day, end_day = self.span
        rule = {"kind": "given", "person": "column" if per_person else "each trip its own unit"}
        return DatasetMetadata(self.name, first_day, end_day, self.window_days, self.trips_bound(per_person=per_person),
                               1, rule, self.accounting, self.key_cap_trips, self.delta, NO_PRESENCE,
                               unit=PERSON_WINDOW if per_person else TRIP, missing_days=tuple(self.missing_days),
                               time_zone=self.time_zone, population=self.population)

    def check_engine(self, engine: str) -> None:
        """What the chosen engine cannot do is refused before anything is read."""
        if engine not in ENGINES:
            raise InvalidData(f"engine={engine!r} must be one of {list(ENGINES)}", field="engine")
        if engine == "polars":
            return
        if self.missing_days:
            raise InvalidData("--days is supported by --engine polars; ingest consecutive days with Spark",
                              field="days")
        if self.trips_table:
            raise InvalidData("--trips-table is ingested with --engine polars (a trips table is already small)",
                              field="engine")
        if self.buckets is not None:
            raise InvalidData("--buckets applies to events ingested with --engine polars; drop it here",
                              field="buckets")

    def check_input(self, expected: Sequence[str], function: str) -> None:
        """An engine entry point reads one kind of input: say which options it was given otherwise."""
        if self.input_format not in expected:
            raise InvalidData(f"{function} reads input_format {' or '.join(map(repr, expected))}, not "
                              f"{self.input_format!r}; build the IngestOptions with input_format={expected[0]!r}",
                              field="input_format")
