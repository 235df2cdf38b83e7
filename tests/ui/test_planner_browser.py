"""The planner page in a real headless Chromium against a real gunicorn: log in, quote, confirm,
spend, see flows on the map and the budget go down; the identical query again is free."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.ui.conftest import REPO, LiveServer, headless_browser

pytestmark = pytest.mark.slow

SCREENSHOT = REPO / "test-output" / "planner.png"


def budget_value(page) -> float:
    return float(page.get_attribute("#budget-remaining", "data-value"))


def test_planner_flows_end_to_end(chromium_path: str, live_server: LiveServer, tmp_path: Path) -> None:
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        problems: list[str] = []
        requests: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        # HTTP error answers (401, 403) are expected and shown in the page; script errors and CSP
        # violations are not
        page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
        page.on("request", lambda req: requests.append(req.url))

        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", "dpf_not-a-key")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:not([hidden])")
        assert "not accepted" in page.inner_text("#login-error")

        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        assert budget_value(page) == 1.0
        assert page.evaluate("sessionStorage.getItem('dpflows.apiKey')") == live_server.planner_key
        assert page.input_value("#dataset") == "small" and page.input_value("#zoning") == "districts"

        # quote first: nothing is spent until the confirmation
        page.fill("#epsilon", "0.25")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        assert page.inner_text("[data-testid=confirm-epsilon]") == "ε 0.25"
        confirm = page.inner_text("#confirm-text")
        assert "window 0" in confirm and "2024-03-04 – 2024-03-11" in confirm and "ε 0.75" in confirm
        page.reload()  # the quote charged nothing; the key survives a reload (sessionStorage)
        page.wait_for_selector("#budget-remaining[data-value]")
        assert budget_value(page) == 1.0

        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        page.click("#confirm-run")
        page.wait_for_selector("#answer:not([hidden])")
        # Locators, not wait_for_function: a string predicate is evaluated with eval, which the
        # page's Content-Security-Policy (script-src 'self') rightly forbids.
        page.locator("#budget-remaining:not([data-value='1'])").wait_for()
        assert budget_value(page) == 0.75
        summary = page.inner_text("#answer-summary")
        assert "spent ε 0.25" in summary and "person-window (7 days)" in summary
        bound = page.inner_text("[data-testid=error-bound]")
        assert re.fullmatch(r"± [\d.,]+", bound)

        # the map: zones drawn from the public cells, flows as lines between centroids
        assert page.locator("#map [data-zone]").count() == 8
        assert page.locator("#map [data-flow]").count() > 0
        # the table: all 64 zone pairs, every count with its ± bound
        counts = page.locator("#values tbody td.num:nth-child(3)").all_inner_texts()
        assert len(counts) == 64 and all(bound in c for c in counts)

        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        drawn = page.locator("#map [data-flow]").count()
        page.select_option("#flow-filter", "positive")
        assert page.locator("#map [data-flow]").count() >= drawn

        # downloads: GeoJSON lines between centroids and CSV rows, each with its interval
        with page.expect_download() as info:
            page.click("#download-geojson")
        geo = json.loads(Path(info.value.path()).read_text())
        assert len(geo["features"]) == 64 and geo["dpflows"]["epsilon_charged"] == 0.25
        line = next(f for f in geo["features"] if f["geometry"]["type"] == "LineString")
        assert {"origin", "destination", "count", "error_bound_95", "lower", "upper"} <= set(line["properties"])
        with page.expect_download() as info:
            page.click("#download-csv")
        rows = Path(info.value.path()).read_text().splitlines()
        assert rows[0] == "origin,destination,count,error_bound_95,lower,upper" and len(rows) == 65

        # the identical query again is the stored answer, free, and marked as such
        page.click("#quote-button")
        page.wait_for_selector("[data-testid=confirm-free]")
        page.click("#confirm-run")
        page.wait_for_selector("[data-testid=reused]")
        page.wait_for_timeout(300)
        assert budget_value(page) == 0.75

        # an over-cap ε is refused with the service's message and nothing is spent
        page.fill("#epsilon", "1.5")
        page.click("#quote-button")
        page.wait_for_selector("#form-error:not([hidden])")
        assert "per-query cap" in page.inner_text("#form-error")
        assert page.get_attribute("#epsilon", "aria-invalid") == "true"
        assert budget_value(page) == 0.75

        assert not problems, problems
        assert all(url.startswith(live_server.base_url) for url in requests), "the page must work offline"


def test_presence_choropleth(chromium_path: str, live_server: LiveServer, tmp_path: Path) -> None:
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        before = budget_value(page)
        page.select_option("#kind", "presence")
        page.select_option("#hour-from", "7")
        page.select_option("#hour-to", "10")
        page.fill("#start", "2024-03-11")
        page.fill("#end", "2024-03-18")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        page.click("#confirm-run")
        page.wait_for_selector("#presence-hour")
        assert page.locator("#presence-hour option").all_inner_texts()[0].startswith("07:00")
        fills = {page.get_attribute(f"#map [data-zone='d{i}'] path", "fill") for i in range(8)}
        assert all(f and f.startswith("rgb(") for f in fills)
        assert len(page.locator("#values tbody tr").all()) == 8 * 3
        page.screenshot(path=str(REPO / "test-output" / "planner-presence.png"), full_page=True)
        # window 0 untouched: the least remaining over windows is still 'before' or less
        assert budget_value(page) <= before


def test_analyst_sees_the_rules_not_the_data(chromium_path: str, live_server: LiveServer, tmp_path: Path) -> None:
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.analyst_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        before = budget_value(page)
        page.select_option("#kind", "presence")
        page.select_option("#zoning", "sectors")
        page.click("#quote-button")
        page.wait_for_selector("#form-error:not([hidden])")
        assert "analyst may query flows only" in page.inner_text("#form-error")
        page.select_option("#kind", "flows")
        page.select_option("#zoning", "districts")
        page.click("#quote-button")
        page.locator("#form-error", has_text="coarse").wait_for()
        assert page.get_attribute("#zoning", "aria-invalid") == "true"
        assert page.is_hidden("#confirm") and page.is_hidden("#answer")
        assert budget_value(page) == before


def test_planner_spends_rho_on_a_zcdp_dataset(chromium_path: str, live_server: LiveServer, tmp_path: Path) -> None:
    """On a dataset accounted in zCDP the page prices, confirms and reports in ρ, and shows the (ε, δ)."""
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        page.select_option("#dataset", "smallz")
        page.locator("#price-unit", has_text="ρ").wait_for()
        page.locator("#budget-remaining[data-value='0.05']").wait_for()
        assert page.input_value("#epsilon") == "0.005"
        page.select_option("#zoning", "districts")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        assert page.inner_text("[data-testid=confirm-epsilon]") == "ρ 0.005"
        assert "ρ 0.045" in page.inner_text("#confirm-text")
        page.click("#confirm-run")
        page.wait_for_selector("#answer:not([hidden])")
        summary = page.inner_text("#answer-summary")
        assert "spent ρ 0.005" in summary and "discrete_gaussian" in summary
        assert "δ 1e-8" in page.inner_text("[data-testid=approx-dp]")
        page.locator("#budget-remaining[data-value='0.045']").wait_for()
        assert budget_value(page) == pytest.approx(0.045)
        assert not problems, problems


def test_a_sparse_answer_shows_only_released_keys_and_the_threshold(chromium_path: str, live_server: LiveServer,
                                                                    tmp_path: Path) -> None:
    """Cell-level OD on a dataset accounted in approximate DP: the confirmation names the threshold and the δ,
    the answer says it is sparse, the map draws only released flows and says what a missing one means."""
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        page.select_option("#dataset", "sparse")
        page.locator("#budget-remaining[data-value='2']").wait_for()
        page.select_option("#zoning", "cell")
        page.fill("#epsilon", "1")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        confirm = page.inner_text("[data-testid=confirm-sparse]")
        assert "the threshold of 113" in confirm and "δ 1e-9" in confirm
        page.click("#confirm-run")
        page.wait_for_selector("#answer:not([hidden])")
        badge = page.inner_text("[data-testid=sparse]")
        assert "above the threshold of 113" in badge and "below the threshold of 113" in badge
        assert "δ spent 1e-9" in page.inner_text("[data-testid=delta-charged]")
        assert "below the threshold of 113" in page.inner_text("[data-testid=sparse-legend]")
        drawn = set(page.locator("#map [data-flow]").evaluate_all("els => els.map(e => e.dataset.flow)"))
        rows = page.locator("#values tbody tr").count()
        assert {"c000>c001", "c002>c003"} <= drawn and "c004>c005" not in drawn and len(drawn) == rows
        assert "sparse: keys not listed are below the threshold of 113" in page.inner_text("#table-title")
        page.screenshot(path=str(REPO / "test-output" / "planner-sparse.png"), full_page=True)
        assert not problems, problems


def test_a_polygon_zoning_is_drawn_from_its_polygons(chromium_path: str, live_server: LiveServer,
                                                     tmp_path: Path) -> None:
    """A zoning loaded from GeoJSON polygons (through the admin endpoint) is drawn as those polygons,
    a MultiPolygon as one zone of several parts; a polygon holding no cell is not a zone, not drawn."""
    import requests

    from tests.test_zoning_sources import WARDS

    r = requests.post(f"{live_server.base_url}/v1/admin/datasets/small/zonings", timeout=30,
                      json={"name": "wards", "geojson": WARDS, "id_field": "WARD"},
                      headers={"Authorization": f"Bearer {live_server.admin_key}"})
    assert r.status_code == 201, r.text
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        page.select_option("#zoning", "wards")
        page.locator("#base-map [data-zone='west'] path").wait_for()
        assert page.locator("#base-map [data-zone]").count() == 2
        # each part as given: a ring of 5 positions (M and 4 L), not the Voronoi regions of the cells
        [west] = page.locator("#base-map [data-zone='west'] path").all()
        east = page.locator("#base-map [data-zone='east'] path").all()
        for part in (west, *east):
            d = part.get_attribute("d")
            assert d.count("M") == 1 and d.count("L") == 4, d
        assert len(east) == 2
        page.screenshot(path=str(REPO / "test-output" / "planner-polygons.png"), full_page=True)
        assert not problems, problems


def test_planner_draws_residents_and_commuting(chromium_path: str, live_server: LiveServer, tmp_path: Path) -> None:
    """Issue 14: residents as a choropleth per week, commuting as arcs home → work, in a real browser."""
    with headless_browser(chromium_path, tmp_path / "chromium-profile") as context:
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.goto(live_server.base_url + "/planner/")
        page.fill("#api-key", live_server.planner_key)
        page.click("#login-form button")
        page.wait_for_selector("#budget-remaining[data-value]")
        page.select_option("#dataset", "smallp")
        page.locator("#zoning option[value=districts]").wait_for(state="attached")
        page.select_option("#zoning", "districts")
        page.select_option("#kind", "residents")
        assert page.is_visible("#residents-options")
        page.select_option("#place", "work")
        page.fill("#start", "2024-03-04")
        page.fill("#end", "2024-03-18")
        page.fill("#epsilon", "0.25")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        page.click("#confirm-run")
        page.wait_for_selector("#answer:not([hidden])")
        page.locator("[data-testid=zone-counts] [data-zone]").first.wait_for()
        assert page.locator("#answer-window option").count() == 2  # two weeks asked
        assert "people whose work lies in each zone" in page.inner_text("#legend")
        assert page.locator("#values thead th").all_inner_texts()[:2] == ["zone", "window"]
        page.select_option("#kind", "commuting")
        page.click("#quote-button")
        page.wait_for_selector("#confirm:not([hidden])")
        page.click("#confirm-run")
        page.locator("#values thead th", has_text="home").wait_for()
        page.select_option("#flow-filter", "positive")  # one person per pair at most here: below the ± bound
        page.locator("#map [data-flow]").first.wait_for()
        assert page.locator("#values thead th").all_inner_texts()[:3] == ["home", "work", "window"]
        assert not problems, problems
