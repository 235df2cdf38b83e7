"""How well the derived home and work cells recover the demo city's true routines (issue 14, item 6).

Generates the demo city with its ground truth (each person's home and work cell, never
ingested), derives per person-window the hour cells, homes and work cells exactly as
ingestion does (dpflows.ingest.derive, default PlaceRule unless overridden), and prints:

- per person-window: the share with a derived home, and with the true home; the same for work
  (among persons whose true work cell is not their home: the others have no work cell to find);
- per district and window: how far exact residents and commuting counts from derived places
  are from those of the true places (total absolute difference / total), before any noise.

Exact per-person figures are fine here: the city is synthetic and nothing is released.

    python benchmarks/bench_places.py [--persons 20000] [--days 28] [--home-hours 22-6] [--work-hours 9-17]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _span(text: str) -> tuple[int, int]:
    start, _, stop = text.partition("-")
    return int(start), int(stop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=20000)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--home-hours", type=_span, default=(22, 6))
    ap.add_argument("--work-hours", type=_span, default=(9, 17))
    ap.add_argument("--min-work-days", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import polars as pl

    from dpflows.aggregates import PlaceRule
    from dpflows.demo import generate_city
    from dpflows.ingest import derive
    from dpflows.ingest.pipeline import _index_cells, _with_window, read_cells

    rule = PlaceRule(args.home_hours, args.work_hours, min_work_days=args.min_work_days)
    with tempfile.TemporaryDirectory() as tmp:
        city = generate_city(Path(tmp) / "city", persons=args.persons, days=args.days, ground_truth=True)
        assert city.truth is not None
        _, lookup = read_cells(city.cells)
        t = time.perf_counter()
        events = _index_cells(pl.scan_parquet(city.events), lookup, city.events, "cell_id", "cell")
        hour_cells = _with_window(derive.presence(events, seed=1), city.first_day, 7).collect().lazy()
        home = derive.homes(hour_cells, rule, seed=1)
        work = derive.works(hour_cells, home, rule, seed=1)
        derived = (home.rename({"cell": "d_home"}).join(work.rename({"cell": "d_work"}), on=["person", "window"],
                                                         how="full", coalesce=True).collect())
        seconds = time.perf_counter() - t
        windows = (city.days + 6) // 7
        ids = lookup.rename({"_cell": "cell", "_cell_id": "cell_id"})
        truth = pl.read_parquet(city.truth).join(pl.DataFrame({"window": list(range(windows))}), how="cross")
        truth = truth.with_columns(
            pl.col("home").replace_strict(ids["cell_id"], ids["cell"], return_dtype=pl.UInt32),
            pl.col("work").replace_strict(ids["cell_id"], ids["cell"], return_dtype=pl.UInt32))
        both = truth.join(derived.with_columns(pl.col("window").cast(pl.Int32)),
                          on=["person", "window"], how="left").with_columns(pl.col("window").cast(pl.Int32))
        districts = pl.read_csv(city.districts).join(ids, on="cell_id").select("cell", "zone_id")
    regular = both.filter(~pl.col("heavy"))
    commuters = regular.filter(pl.col("home") != pl.col("work"))

    def share(frame: pl.DataFrame, expr: pl.Expr) -> str:
        return f"{100 * frame.select(expr.fill_null(False).mean()).item():.1f}%"

    def right(frame: pl.DataFrame, place: str) -> str:
        """Share of all person-windows whose derived place is the true one, and of those with one derived."""
        derived = frame.filter(pl.col(f"d_{place}").is_not_null())
        return (f"= true {place} {share(frame, pl.col(f'd_{place}') == pl.col(place))} of all, "
                f"{share(derived, pl.col(f'd_{place}') == pl.col(place))} of those derived")

    print(f"demo city: {args.persons:,} persons, {args.days} days, {windows} windows; rule {rule.to_json()['home_hours']} "
          f"nights, {rule.to_json()['work_hours']} work hours Mon-Fri on >= {rule.min_work_days} days; derived in "
          f"{seconds:.1f} s")
    print(f"person-windows of regular persons ({regular.height:,}; heavy users, 0.5%, apart):")
    print(f"  home derived {share(regular, pl.col('d_home').is_not_null())}, {right(regular, 'home')}")
    print(f"  of those whose true work is not their home ({commuters.height:,}): work derived "
          f"{share(commuters, pl.col('d_work').is_not_null())}, {right(commuters, 'work')}; home and work both right "
          f"{share(commuters, (pl.col('d_home') == pl.col('home')) & (pl.col('d_work') == pl.col('work')))}")
    stay = regular.filter(pl.col("home") == pl.col("work"))
    if stay.height:
        print(f"  true work = home ({stay.height:,}): a work cell derived anyway "
              f"{share(stay, pl.col('d_work').is_not_null())} (never the home)")
    heavy = both.filter(pl.col("heavy"))
    if heavy.height:
        print(f"  heavy users ({heavy.height:,}): home derived {share(heavy, pl.col('d_home').is_not_null())} "
              f"(= true {share(heavy, pl.col('d_home') == pl.col('home'))}), work derived "
              f"{share(heavy, pl.col('d_work').is_not_null())}")

    def per_district(frame: pl.DataFrame, cell: str, alias: str) -> pl.DataFrame:
        return (frame.filter(pl.col(cell).is_not_null()).join(districts, left_on=cell, right_on="cell")
                .group_by("window", "zone_id").len().rename({"len": alias}))

    print("exact counts per district and window, derived places against true ones (|difference| summed / true total):")
    for label, true_col, derived_col, frame in (("residents (home)", "home", "d_home", both),
                                                ("workers (work)", "work", "d_work", both.filter(
                                                    pl.col("home") != pl.col("work")))):
        true = per_district(frame, true_col, "true")
        got = per_district(both, derived_col, "derived")
        cmp = true.join(got, on=["window", "zone_id"], how="full", coalesce=True).fill_null(0)
        print(f"  {label:<17} {cmp['true'].sum():>7,} true, {cmp['derived'].sum():>7,} derived, "
              f"off by {100 * (cmp['true'] - cmp['derived']).abs().sum() / cmp['true'].sum():5.1f}%")
    pairs = both.filter(pl.col("home") != pl.col("work"))
    true_od = (pairs.join(districts, left_on="home", right_on="cell").join(districts, left_on="work", right_on="cell",
                                                                           suffix="_w")
               .group_by("window", "zone_id", "zone_id_w").len().rename({"len": "true"}))
    got_od = (both.filter(pl.col("d_home").is_not_null() & pl.col("d_work").is_not_null())
              .join(districts, left_on="d_home", right_on="cell").join(districts, left_on="d_work", right_on="cell",
                                                                        suffix="_w")
              .group_by("window", "zone_id", "zone_id_w").len().rename({"len": "derived"}))
    cmp = true_od.join(got_od, on=["window", "zone_id", "zone_id_w"], how="full", coalesce=True).fill_null(0)
    print(f"  {'commuting':<17} {cmp['true'].sum():>7,} true, {cmp['derived'].sum():>7,} derived, "
          f"off by {100 * (cmp['true'] - cmp['derived']).abs().sum() / cmp['true'].sum():5.1f}%")


if __name__ == "__main__":
    main()
