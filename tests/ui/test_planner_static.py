"""The planner blueprint serves its three static files with a strict Content-Security-Policy."""

from __future__ import annotations

import pytest
from flask import Flask

from api.planner import register_planner


@pytest.fixture
def web():
    app = Flask("planner-test")
    register_planner(app)
    return app.test_client()


def test_page_and_assets_are_served(web) -> None:
    page = web.get("/planner/")
    assert page.status_code == 200 and b'<script src="app.js"' in page.data
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert page.headers["Referrer-Policy"] == "no-referrer"
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = web.get(f"/planner/{name}")
        assert resp.status_code == 200 and kind in resp.content_type
        resp.close()
    page.close()
    assert web.get("/planner").status_code == 308


def test_nothing_outside_the_folder(web) -> None:
    for path in ("/planner/../planner.py", "/planner/%2e%2e/planner.py", "/planner/nope.js"):
        assert web.get(path).status_code == 404


def test_page_loads_no_third_party_code() -> None:
    from api.planner import STATIC_DIR

    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name
