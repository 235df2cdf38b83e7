"""Bounding: no person-window ever exceeds L, and the records kept are a uniform sample."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from dpflows.ingest.bounding import bound_per_person_window

records = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 10_000)), min_size=0, max_size=300
)


@settings(max_examples=200, deadline=None)
@given(rows=records, bound=st.integers(1, 12), seed=st.integers(0, 2**63 - 1))
def test_no_person_window_exceeds_the_bound(rows: list[tuple[int, int, int]], bound: int, seed: int) -> None:
    frame = pl.DataFrame(rows, schema={"person": pl.Int64, "window": pl.Int64, "payload": pl.Int64}, orient="row")
    kept = bound_per_person_window(frame.lazy(), bound, seed=seed).collect()
    per_group = kept.group_by("person", "window").len()
    assert per_group.is_empty() or per_group["len"].max() <= bound
    before = frame.group_by("person", "window").len().rename({"len": "n"})
    joined = before.join(per_group, on=["person", "window"], how="left").fill_null(0)
    # nothing is dropped below the bound: min(n, L) records survive in every group
    assert (joined["len"] == joined["n"].clip(upper_bound=bound)).all()
    # kept rows are rows of the input
    assert kept.join(frame, on=["person", "window", "payload"], how="anti").is_empty()


def test_each_record_is_kept_with_probability_l_over_n() -> None:
    """One person-window of n = 40 records, L = 10, over 2,000 seeds: each record is kept
    Binomial(2000, 1/4) times, mean 500, sd 19.4. 40 records × a 6.5 sd band: a false failure
    has probability below 40 × 1e-10."""
    n, bound, trials = 40, 10, 2000
    frame = pl.DataFrame({"person": [7] * n, "window": [0] * n, "payload": list(range(n))}).lazy()
    counts = pl.concat([bound_per_person_window(frame, bound, seed=s).collect() for s in range(trials)])
    kept = counts.group_by("payload").len()
    assert kept.height == n
    mean, sd = trials * bound / n, (trials * bound / n * (1 - bound / n)) ** 0.5
    assert kept["len"].min() >= mean - 6.5 * sd and kept["len"].max() <= mean + 6.5 * sd


def test_first_records_are_not_favoured() -> None:
    """The earliest L records are kept no more often than any other L (order must not leak)."""
    frame = pl.DataFrame({"person": [1] * 30, "window": [0] * 30, "payload": list(range(30))}).lazy()
    first_ten = sum(
        bound_per_person_window(frame, 10, seed=s).collect()["payload"].to_list() == list(range(10))
        for s in range(200)
    )
    assert first_ten == 0  # P(exactly the first 10 of 30) = 1/C(30,10) ≈ 3e-8 per seed
