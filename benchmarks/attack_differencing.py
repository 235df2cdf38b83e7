"""The differencing attack that broke "groups of 50", run against a threshold API and against dpflows.

Run:  PYTHONPATH=. /tmp/venv/bin/python benchmarks/attack_differencing.py [--quick] [--seed N]

The city: a grid of cells grouped into wards, a few thousand persons with a home cell and a
work cell, a week of trips (morning and evening commutes on weekdays, a few errands), bounded
per person-window to L trips by uniform sampling, and written through `write_aggregates`.

The attacker knows a target's home cell c0 (hence home ward A) and wants to know whether the
target travelled from home to ward B (say, a clinic's ward) this week. They ask origin-
destination flows twice, over two public zonings that differ by one cell:

    q1 = flows A→B on "wards"                   (c0 inside A)
    q2 = flows A→B on "wards-moved-<c0>"        (c0 moved into a neighbouring ward C)

Both groups hold far more than 50 trips, so a threshold API releases both exactly, and
q1 - q2 = trips from c0 to B. The attacker subtracts what they know of everyone else's trips
in that slice (the DP game: the attacker knows the rest of the dataset) and says "present" if
anything is left. Neighbouring datasets: the city with the target's bounded records, and the
city without them; every target is run in both, so the prior is balanced.

Against dpflows the same two queries go through `Service.answer` on a fresh ledger, at ε per
query. The attacker's best test is to threshold the difference of the two noisy answers; we
pick the threshold in hindsight (favourable to the attacker). A stronger attacker who knows
everyone else's trips everywhere can also use q2's C→B count (the target's trips from c0 land
there), so we report that test too. Both are bounded by pure ε-DP with ε = 2·ε_query (two
queries, sequential composition): with a balanced prior no test succeeds more often than
e^ε / (1 + e^ε).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dpflows.aggregates import AggregateStore, DatasetMetadata, write_aggregates
from dpflows.budget import Epsilon
from dpflows.ledger.memory import MemoryLedger
from dpflows.mechanisms import scale_for_epsilon
from dpflows.queries import make_spec, prepare
from dpflows.service import QueryRequest, Service

FIRST_DAY = dt.date(2024, 3, 4)  # a Monday; one 7-day window
DAYS = 7
GRID = 12  # 12 × 12 cells
WARD_SIDE = 4  # wards are 4 × 4 blocks of cells: 9 wards
L_TRIPS = 8  # per person-window: the sensitivity
MIN_GROUP = 50  # the threshold operators sold as "anonymous"
CITY = "city"
WARDS = "wards"


# -- the synthetic city (numpy Generator: synthetic data and attacker coin flips only, never noise) --


def cell_id(i: int) -> str:
    return f"c{i:03d}"


def ward_of(i: int) -> int:
    row, col = divmod(i, GRID)
    return (row // WARD_SIDE) * (GRID // WARD_SIDE) + col // WARD_SIDE


def make_trips(rng: np.random.Generator, n_persons: int) -> pl.DataFrame:
    """Per-person trip records (person, day, hour, origin, dest) for one week, before bounding."""
    n_cells = GRID * GRID
    rows, cols = np.divmod(np.arange(n_cells), GRID)
    centre = (GRID - 1) / 2
    dist = np.hypot(rows - centre, cols - centre)
    home_w = np.exp(-dist / 6.0)
    work_w = np.exp(-dist / 2.5)  # jobs concentrate in the centre
    home = rng.choice(n_cells, n_persons, p=home_w / home_w.sum())
    work = rng.choice(n_cells, n_persons, p=work_w / work_w.sum())
    person, day, hour, origin, dest = [], [], [], [], []
    for p in range(n_persons):
        commuter = rng.random() < 0.75
        for d in range(DAYS):
            weekday = d < 5
            if commuter and weekday and rng.random() < 0.9:
                person += [p, p]
                day += [d, d]
                hour += [int(rng.integers(6, 10)), int(rng.integers(16, 20))]
                origin += [home[p], work[p]]
                dest += [work[p], home[p]]
            for _ in range(int(rng.poisson(0.6 if weekday else 1.2))):  # errands out and back
                shop = int(rng.integers(0, n_cells))
                h = int(rng.integers(9, 21))
                person += [p, p]
                day += [d, d]
                hour += [h, min(h + 1, 23)]
                origin += [home[p], shop]
                dest += [shop, home[p]]
    return pl.DataFrame({
        "person": np.asarray(person, dtype=np.int64),
        "day": np.asarray(day, dtype=np.int32),
        "hour": np.asarray(hour, dtype=np.int8),
        "origin": np.asarray(origin, dtype=np.int64),
        "dest": np.asarray(dest, dtype=np.int64),
        "home": home[np.asarray(person, dtype=np.int64)],
        "work": work[np.asarray(person, dtype=np.int64)],
    }).filter(pl.col("origin") != pl.col("dest"))


def bound_trips(trips: pl.DataFrame, limit: int, rng: np.random.Generator) -> pl.DataFrame:
    """Keep at most `limit` trips per person-window by uniform random sampling (design §2).

    dpflows/ingest/bounding.py is not on this branch, so the benchmark bounds like ingestion
    would: a random key per record, keep the `limit` smallest keys of each person-window.
    """
    # (person, day, hour, origin, dest) rows, any number per person
    keyed = trips.with_columns(
        (pl.col("day") // DAYS).alias("window"),
        pl.Series("_u", rng.random(trips.height)),
    )
    # (person, window) -> at most `limit` rows, a uniform sample of that person's trips
    return (
        keyed.with_columns(pl.col("_u").rank("ordinal").over("person", "window").alias("_rank"))
        .filter(pl.col("_rank") <= limit)
        .drop("_u", "_rank", "window")
    )


def aggregate(bounded: pl.DataFrame) -> pl.DataFrame:
    """(day, hour, origin_cell, dest_cell) -> count: the only thing ingestion writes."""
    return (
        bounded.group_by("day", "hour", "origin", "dest").agg(pl.len().cast(pl.Int64).alias("count"))
        .with_columns(
            pl.lit(FIRST_DAY).dt.offset_by(pl.format("{}d", pl.col("day"))).alias("day"),
            pl.col("origin").map_elements(cell_id, return_dtype=pl.String),
            pl.col("dest").map_elements(cell_id, return_dtype=pl.String),
        )
    )


def cells_frame() -> pl.DataFrame:
    n = GRID * GRID
    return pl.DataFrame({
        "cell_id": [cell_id(i) for i in range(n)],
        "lat": [52.0 + (i // GRID) * 0.01 for i in range(n)],
        "lon": [13.0 + (i % GRID) * 0.01 for i in range(n)],
    })


def wards_csv(moved: tuple[int, int] | None = None) -> str:
    """The public ward zoning; `moved=(cell, ward)` redraws one boundary to put one cell elsewhere."""
    lines = ["cell_id,zone_id"]
    for i in range(GRID * GRID):
        ward = moved[1] if moved is not None and moved[0] == i else ward_of(i)
        lines.append(f"{cell_id(i)},w{ward}")
    return "\n".join(lines) + "\n"


def moved_zoning_name(cell: int, ward: int) -> str:
    return f"wards-moved-{cell_id(cell)}-to-w{ward}"


def write_city(root: Path, name: str, bounded: pl.DataFrame, moved_cells: set[tuple[int, int]]) -> None:
    """Write one dataset through the real aggregate writer and load its public zonings as an admin would."""
    meta = DatasetMetadata(name, FIRST_DAY, FIRST_DAY + dt.timedelta(days=DAYS), DAYS, L_TRIPS, 1,
                           {"kind": "synthetic-attack-benchmark"})
    presence = pl.DataFrame(schema={"day": pl.Date, "hour": pl.Int8, "cell": pl.String, "count": pl.Int64})
    write_aggregates(root / "datasets" / name, meta, cells_frame(), aggregate(bounded), presence)
    admin = Service(AggregateStore(root), MemoryLedger())
    admin.add_zoning(name, WARDS, wards_csv())
    for cell, ward in sorted(moved_cells):
        admin.add_zoning(name, moved_zoning_name(cell, ward), wards_csv((cell, ward)))


# -- the attack ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    person: int
    home: int  # c0, known to the attacker
    ward_a: int
    ward_b: int  # the hypothesis: the target travelled c0 -> ward B this week
    ward_c: int  # where the second zoning puts c0
    trips_in_slice: int  # the target's bounded trips c0 -> B (1..L): the signal
    others_slice: int  # everyone else's trips c0 -> B: the attacker's background knowledge
    others_q1: int  # everyone else's A->B trips on "wards" (the strongest attacker knows these too)
    others_q2: int  # everyone else's C->B trips on the moved zoning
    dataset_absent: str  # the neighbouring dataset without the target


def moved_ward(home: int, ward_a: int, ward_b: int) -> int:
    """A neighbouring ward to redraw c0 into (not A, not B)."""
    row, col = divmod(home, GRID)
    for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
        for step in range(1, GRID):
            r, c = row + dr * step, col + dc * step
            if not (0 <= r < GRID and 0 <= c < GRID):
                break
            w = ward_of(r * GRID + c)
            if w not in (ward_a, ward_b):
                return w
    raise AssertionError("every cell has a neighbouring ward")


def zone_counts(bounded: pl.DataFrame, zone_of_cell: np.ndarray) -> dict[tuple[int, int], int]:
    oz = zone_of_cell[bounded["origin"].to_numpy()]
    dz = zone_of_cell[bounded["dest"].to_numpy()]
    keys, counts = np.unique(oz * 1000 + dz, return_counts=True)
    return {(int(k) // 1000, int(k) % 1000): int(n) for k, n in zip(keys, counts, strict=True)}


def choose_targets(bounded: pl.DataFrame, n_targets: int, rng: np.random.Generator) -> tuple[list[Target], int]:
    """Commuters with at least one bounded home -> work-ward trip whose two groups are >= MIN_GROUP.

    Returns the targets and how many eligible commuters were seen (the scan stops at 4 × n_targets).
    """
    wards = np.asarray([ward_of(i) for i in range(GRID * GRID)])
    base = zone_counts(bounded, wards)
    ward_col = pl.Series(wards)
    with_wards = bounded.with_columns(
        pl.col("dest").map_batches(lambda c: ward_col.gather(c), return_dtype=pl.Int64).alias("dest_ward"),
        pl.col("home").map_batches(lambda c: ward_col.gather(c), return_dtype=pl.Int64).alias("home_ward"),
        pl.col("work").map_batches(lambda c: ward_col.gather(c), return_dtype=pl.Int64).alias("work_ward"),
    )
    # (person) -> k = bounded trips from the home cell to the work ward, for commuters across wards
    per_person = with_wards.filter(
        (pl.col("origin") == pl.col("home"))
        & (pl.col("dest_ward") == pl.col("work_ward"))
        & (pl.col("home_ward") != pl.col("work_ward"))
    ).group_by("person").agg(pl.len().alias("k"), pl.col("home").first(), pl.col("work").first())
    candidates = per_person.sort("person").rows(named=True)
    order = rng.permutation(len(candidates))
    targets: list[Target] = []
    eligible = 0
    for idx in order:
        cand = candidates[int(idx)]
        p, c0 = cand["person"], cand["home"]
        a, b = int(wards[c0]), int(wards[cand["work"]])
        c = moved_ward(c0, a, b)
        moved = wards.copy()
        moved[c0] = c
        mine = bounded.filter(pl.col("person") == p)
        own_q1 = zone_counts(mine, wards).get((a, b), 0)
        own_q2_ab = zone_counts(mine, moved).get((a, b), 0)
        moved_counts = zone_counts(bounded, moved)
        # The threshold API must release both groups in both worlds (present and absent).
        q1_absent = base.get((a, b), 0) - own_q1
        q2_absent = moved_counts.get((a, b), 0) - own_q2_ab
        if min(q1_absent, q2_absent) < MIN_GROUP:
            continue
        eligible += 1
        if len(targets) < n_targets:
            slice_all = int(((bounded["origin"].to_numpy() == c0) & (wards[bounded["dest"].to_numpy()] == b)).sum())
            own_cb = zone_counts(mine, moved).get((c, b), 0)
            targets.append(Target(
                person=p, home=c0, ward_a=a, ward_b=b, ward_c=c, trips_in_slice=int(cand["k"]),
                others_slice=slice_all - int(cand["k"]), others_q1=q1_absent,
                others_q2=moved_counts.get((c, b), 0) - own_cb, dataset_absent=f"{CITY}-minus-{len(targets):04d}",
            ))
        elif eligible > 4 * n_targets:
            break
    return targets, eligible


class ThresholdApi:
    """What operators sold: exact flows for every group of at least 50 trips, the rest suppressed."""

    def __init__(self, store: AggregateStore) -> None:
        self.store = store

    def flows(self, dataset: str, zoning: str) -> dict[tuple[str, str], int | None]:
        spec = make_spec("flows", dataset=dataset, zoning=zoning, start=FIRST_DAY,
                         end=FIRST_DAY + dt.timedelta(days=DAYS))
        prepared = prepare(spec, self.store.get(dataset))
        keys = prepared.domain.rows()
        return {
            (k["origin"], k["destination"]): (int(n) if n >= MIN_GROUP else None)
            for k, n in zip(keys, prepared.true_counts, strict=True)
        }


def threshold_attack(api: ThresholdApi, target: Target, dataset: str) -> bool:
    """True = the attacker says the target made the trip."""
    a, b = f"w{target.ward_a}", f"w{target.ward_b}"
    q1 = api.flows(dataset, WARDS)[(a, b)]
    q2 = api.flows(dataset, moved_zoning_name(target.home, target.ward_c))[(a, b)]
    if q1 is None or q2 is None:
        raise AssertionError("choose_targets keeps only targets whose groups are released")
    return (q1 - q2) - target.others_slice >= 1


def dpflows_attack(store: AggregateStore, target: Target, dataset: str, epsilon: Epsilon) -> tuple[int, int, int]:
    """Two real queries on a fresh ledger; returns (difference test statistic, strongest test statistic, ε spent)."""
    service = Service(store, MemoryLedger())
    client, _key = service.create_client("attacker", "planner")
    service.set_cap(dataset, Epsilon.parse("10"), client_id=client.id, window=None)
    service.set_cap(dataset, Epsilon.parse("10"), client_id=None, window=None)
    end = FIRST_DAY + dt.timedelta(days=DAYS)
    answers = []
    for zoning in (WARDS, moved_zoning_name(target.home, target.ward_c)):
        spec = make_spec("flows", dataset=dataset, zoning=zoning, start=FIRST_DAY, end=end)
        answers.append(service.answer(QueryRequest(spec=spec, epsilon=epsilon), client))
    a, b, c = f"w{target.ward_a}", f"w{target.ward_b}", f"w{target.ward_c}"
    q1 = {(r["origin"], r["destination"]): r["count"] for r in answers[0].values}
    q2 = {(r["origin"], r["destination"]): r["count"] for r in answers[1].values}
    difference = (q1[(a, b)] - q2[(a, b)]) - target.others_slice
    strongest = (q1[(a, b)] - target.others_q1) + (q2[(c, b)] - target.others_q2)
    spent = sum(x.charged.nanos for x in answers)
    return difference, strongest, spent


def _best_threshold(present: np.ndarray, absent: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced success) of the best rule 'present iff statistic >= t' on these samples."""
    values = np.unique(np.concatenate([present, absent]))
    thresholds = np.concatenate([values, [values.max() + 1]])
    tpr = 1 - np.searchsorted(np.sort(present), thresholds, side="left") / len(present)
    tnr = np.searchsorted(np.sort(absent), thresholds, side="left") / len(absent)
    success = (tpr + tnr) / 2
    best = int(np.argmax(success))
    return float(thresholds[best]), float(success[best])


def threshold_test_success(present: np.ndarray, absent: np.ndarray) -> tuple[float, float]:
    """Balanced-prior success of the threshold test: (cross-validated, chosen in hindsight).

    Cross-validated: the attacker learns the threshold on half of the trials and is scored on
    the other half, both ways round; this estimate is unbiased. In hindsight: the best
    threshold for all trials at once, which flatters the attacker by a little.
    """
    scores = []
    for fit, score in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        t, _ = _best_threshold(present[fit], absent[fit])
        scores.append((np.mean(present[score] >= t) + np.mean(absent[score] < t)) / 2)
    return float(np.mean(scores)), _best_threshold(present, absent)[1]


def optimal_success(scale: float, k: int, queries: int = 2) -> float:
    """Exact balanced success of the best possible test when the target adds k to one value of each query.

    Per query the log-likelihood ratio of a noisy value y is (|y| - |y - k|) / scale, a function
    of clip(y, 0, k); summed over the queries it is monotone in the sum of the clipped values, so
    the best test thresholds that sum. Success = (1 + total variation) / 2 on its distribution.
    """
    a = math.exp(-1.0 / scale)
    def pmf(n: np.ndarray) -> np.ndarray:
        return (1 - a) / (1 + a) * a ** np.abs(n)
    def cdf_le(n: int) -> float:  # P(N <= n)
        return a ** (-n) / (1 + a) if n <= 0 else 1 - a ** (n + 1) / (1 + a)
    inner = np.arange(1, k)
    absent = np.concatenate([[cdf_le(0)], pmf(inner), [1 - cdf_le(k - 1)]])  # clip(N, 0, k)
    present = np.concatenate([[cdf_le(-k)], pmf(inner - k), [1 - cdf_le(-1)]])  # clip(k + N, 0, k)
    p, q = present, absent
    for _ in range(queries - 1):
        p, q = np.convolve(p, present), np.convolve(q, absent)
    return float(0.5 + 0.5 * np.maximum(p - q, 0).sum())


def dp_bound(epsilon_total: float) -> float:
    return math.exp(epsilon_total) / (1 + math.exp(epsilon_total))


@dataclass(frozen=True)
class DpRow:
    epsilon_per_query: Epsilon
    trials: int
    difference_cv: float  # threshold learnt on half the trials, scored on the other half
    difference_hindsight: float
    strongest_cv: float
    strongest_hindsight: float
    best_these: float  # exact success of the optimal test for these targets
    best_worst_case: float  # exact success of the optimal test when all L trips are in the slice

    @property
    def epsilon_total(self) -> float:
        return 2 * self.epsilon_per_query.as_float()

    @property
    def bound(self) -> float:
        return dp_bound(self.epsilon_total)

    @property
    def half_width(self) -> float:
        """Two binomial standard errors of a success rate near 50% over these trials."""
        return 2 * math.sqrt(0.25 / self.trials)


@dataclass(frozen=True)
class AttackReport:
    persons: int
    targets: list[Target]
    eligible_seen: int
    threshold_trials: int
    threshold_success: float
    rows: list[DpRow]
    seconds: float


def run(persons: int, n_targets: int, repeats: int, epsilons: list[Epsilon], seed: int) -> AttackReport:
    """Build the city, run the attack against the threshold API and against dpflows at each ε."""
    rng = np.random.default_rng(seed)  # synthetic data, bounding samples and target choice; all noise is OpenDP's
    started = time.perf_counter()
    trips = make_trips(rng, persons)
    bounded = bound_trips(trips, L_TRIPS, rng)
    targets, eligible = choose_targets(bounded, n_targets, rng)
    if not targets:
        raise SystemExit(f"no target has both groups >= {MIN_GROUP}; use more persons")

    with tempfile.TemporaryDirectory(prefix="dpflows-attack-") as tmp:
        root = Path(tmp)
        write_city(root, CITY, bounded, {(t.home, t.ward_c) for t in targets})
        for t in targets:
            write_city(root, t.dataset_absent, bounded.filter(pl.col("person") != t.person), {(t.home, t.ward_c)})
        store = AggregateStore(root)
        api = ThresholdApi(store)

        threshold_correct = [
            threshold_attack(api, t, dataset) == present
            for t in targets
            for dataset, present in ((CITY, True), (t.dataset_absent, False))
        ]

        rows = []
        for eps in epsilons:
            diff: dict[bool, list[int]] = {True: [], False: []}
            strong: dict[bool, list[int]] = {True: [], False: []}
            for _ in range(repeats):
                for t in targets:
                    for dataset, present in ((CITY, True), (t.dataset_absent, False)):
                        d, st, spent = dpflows_attack(store, t, dataset, eps)
                        assert spent == 2 * eps.nanos, "the attacker paid for both queries"
                        diff[present].append(d)
                        strong[present].append(st)
            diff_cv, diff_hind = threshold_test_success(np.asarray(diff[True]), np.asarray(diff[False]))
            strong_cv, strong_hind = threshold_test_success(np.asarray(strong[True]), np.asarray(strong[False]))
            scale = scale_for_epsilon(L_TRIPS, eps)
            rows.append(DpRow(
                epsilon_per_query=eps, trials=2 * len(diff[True]),
                difference_cv=diff_cv, difference_hindsight=diff_hind,
                strongest_cv=strong_cv, strongest_hindsight=strong_hind,
                best_these=float(np.mean([optimal_success(scale, t.trips_in_slice) for t in targets])),
                best_worst_case=optimal_success(scale, L_TRIPS),
            ))
    return AttackReport(persons, targets, eligible, len(threshold_correct),
                        float(np.mean(threshold_correct)), rows, time.perf_counter() - started)


def print_report(report: AttackReport) -> None:
    targets = report.targets
    print(f"city: {report.persons} persons, {GRID * GRID} cells, {(GRID // WARD_SIDE) ** 2} wards, one week; "
          f"L = {L_TRIPS} trips per person-window")
    print(f"targets: {len(targets)} commuters, drawn from {report.eligible_seen} eligible ones examined (a bounded "
          f"trip home -> work ward, both groups >= {MIN_GROUP} without them)")
    print(f"target's own trips in the differenced slice: median {int(np.median([t.trips_in_slice for t in targets]))}"
          f" (1..{L_TRIPS}); nobody else made that trip for "
          f"{np.mean([t.others_slice == 0 for t in targets]):.0%} of targets")
    print()
    print(f"{'API':<28}{'ε/query':>8}{'ε total':>8}{'trials':>7}{'difference test':>16}{'strongest test':>16}"
          f"{'best: these':>13}{'best: k=L':>11}{'DP bound':>10}")
    print(f"{'threshold >= 50 (exact)':<28}{'-':>8}{'∞':>8}{report.threshold_trials:>7}"
          f"{report.threshold_success:>16.1%}{'-':>16}{'100.0%':>13}{'100.0%':>11}{'none':>10}")
    for r in report.rows:
        print(f"{'dpflows (discrete Laplace)':<28}{r.epsilon_per_query.as_float():>8g}{r.epsilon_total:>8g}"
              f"{r.trials:>7}"
              f"{r.difference_cv:>10.1%} ±{r.half_width:.1%}{r.strongest_cv:>10.1%} ±{r.half_width:.1%}"
              f"{r.best_these:>13.1%}{r.best_worst_case:>11.1%}{r.bound:>10.1%}")
    print()
    print("success = share of balanced trials (target present / absent) the attacker calls right; 50% is a coin.")
    print("difference test: threshold q1 - q2 (A->B) minus the known other trips from c0 to B.")
    print("strongest test: also uses q2's C->B value, where the target's trips land (attacker knows all others).")
    print("best: the exact success of the optimal test, from the discrete Laplace pmf, for these targets' own")
    print("      trip counts, and for a worst-case target whose L bounded trips all fall in the slice.")
    print("dpflows: threshold learnt on half the trials, scored on the other half; ± is two binomial standard errors.")
    print("hindsight (best threshold on all trials, flatters the attacker): "
          + "; ".join(f"ε/query {r.epsilon_per_query}: {r.difference_hindsight:.1%} / {r.strongest_hindsight:.1%}"
                      for r in report.rows))
    print(f"DP bound: e^ε/(1+e^ε), ε = both queries together. Ran in {report.seconds:.0f} s.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-size run (a few seconds)")
    parser.add_argument("--persons", type=int, default=None)
    parser.add_argument("--targets", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="noise draws per target, world and ε")
    parser.add_argument("--epsilons", default="0.1,0.5,1", help="ε per query, comma-separated")
    parser.add_argument("--seed", type=int, default=20240304)
    args = parser.parse_args(argv)
    report = run(
        persons=args.persons or (1500 if args.quick else 3000),
        n_targets=args.targets or (20 if args.quick else 150),
        repeats=args.repeats or (3 if args.quick else 6),
        epsilons=[Epsilon.parse(e) for e in args.epsilons.split(",")],
        seed=args.seed,
    )
    print_report(report)
    exceeded = any(
        max(r.difference_cv, r.strongest_cv) > r.bound + r.half_width or r.best_worst_case > r.bound
        for r in report.rows
    )
    return 1 if exceeded else 0


if __name__ == "__main__":
    sys.exit(main())
