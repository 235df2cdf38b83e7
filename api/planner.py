"""The planner web page: static files under /planner/, no server-side logic.

The page is plain HTML, JavaScript and SVG (no build step, no third-party code, no internet
tiles) and talks to the JSON API with the key the user types in; this blueprint only serves
the files. The lead calls ``register_planner(app)`` from ``create_app``.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, redirect, send_from_directory

STATIC_DIR = Path(__file__).parent / "static" / "planner"

planner_bp = Blueprint("planner", __name__)

#: The page holds an API key in sessionStorage: no framing, no third-party origins, no referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@planner_bp.after_request
def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@planner_bp.get("/planner")
def _planner_no_slash() -> Response:
    return redirect("/planner/", code=308)  # type: ignore[return-value]


@planner_bp.get("/planner/")
def planner_index() -> Response:
    """The single page."""
    return send_from_directory(STATIC_DIR, "index.html")


@planner_bp.get("/planner/<path:filename>")
def planner_asset(filename: str) -> Response:
    """app.js, style.css; send_from_directory refuses paths outside the folder."""
    return send_from_directory(STATIC_DIR, filename)


def register_planner(app: Flask) -> None:
    """Serve the planner page at /planner/ on this app."""
    app.register_blueprint(planner_bp)
