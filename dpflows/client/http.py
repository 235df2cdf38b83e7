"""DpflowsClient: typed calls over the standard library's urllib (no Flask, no `api`)."""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, ClassVar

import polars as pl

from dpflows.client.errors import ConnectionFailedError, DpflowsClientError, NotFoundError, error_from_response
from dpflows.client.records import (
    _ZONE_CHANGE_SCHEMA,
    Budget,
    BudgetWindow,
    ClientInfo,
    DatasetInfo,
    IssuedKey,
    KeyInfo,
    QueryAnswer,
    Quote,
    RelativeChangeAnswer,
    WindowCharge,
    _iso,
    parse_answer,
)
from dpflows.query_kinds import QUERY_KINDS

# -- the client --------------------------------------------------------------------------------


class DpflowsClient:
    """Calls the dpflows HTTP API with one key; every method is one request."""

    #: Admin endpoint paths, in one place so that they follow the API if it renames them.
    ADMIN_PATHS: ClassVar[dict[str, str]] = {
        "clients": "/v1/admin/clients",
        "client_keys": "/v1/admin/clients/{client_id}/keys",
        "key": "/v1/admin/keys/{key_id}",
        "caps": "/v1/admin/caps",
        "groups": "/v1/admin/groups",
        "zonings": "/v1/admin/datasets/{dataset}/zonings",
        "audit": "/v1/admin/audit",
    }

    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self._families: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"DpflowsClient({self.base_url!r}, api_key=<hidden>)"

    # -- transport ----------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                body: Any = None) -> Any:
        """One JSON request; returns the decoded body or raises the matching DpflowsClientError."""
        url = self.base_url + path
        if params:
            query = {k: v for k, v in params.items() if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 (http(s) checked in __init__)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = None
            raise error_from_response(exc.code, doc, exc.headers, self.error_families()) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConnectionFailedError(f"cannot reach {self.base_url}: {reason}", code="connection_failed") from exc
        if status == 204 or not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DpflowsClientError(f"{method} {path} answered non-JSON", code="bad_response", status=status) from exc

    def error_families(self) -> dict[str, str]:
        """code -> family from the service's own error table, fetched once (empty if it cannot be read)."""
        if self._families is None:
            try:
                url = self.base_url + "/v1/errors"
                req = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (http(s) checked)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    table = json.loads(resp.read())["errors"]
                self._families = {str(row["code"]): str(row["family"]) for row in table}
            except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError, KeyError, TypeError):
                return {}  # an older service, or none: statuses still give the class
        return self._families

    # -- queries ------------------------------------------------------------------------------

    @staticmethod
    def _query_body(dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                    hours: tuple[int, int] | list[int] | None, weekdays: list[int] | tuple[int, ...] | None,
                    epsilon: float | str | None, max_error: float | None, confidence: float | None,
                    clamp_negative: bool | None, rho: float | str | None = None, consistent: bool | None = None,
                    derive: bool | None = None, delta: float | str | None = None, **extra: Any) -> dict[str, Any]:
        if sum(x is not None for x in (epsilon, rho, max_error)) != 1:
            raise ValueError("pass exactly one of epsilon (pure-DP datasets), rho (zCDP datasets) or max_error")
        body: dict[str, Any] = {"dataset": dataset, "zoning": zoning, "start": _iso(start), "end": _iso(end)}
        optional = {"hours": None if hours is None else list(hours),
                    "weekdays": None if weekdays is None else list(weekdays),
                    # ε and ρ given as text ("0.5") go out as JSON numbers: the API refuses strings
                    "epsilon": None if epsilon is None else float(epsilon),
                    "rho": None if rho is None else float(rho),
                    # approximate-DP datasets: the δ a sparse answer may spend (it sets the threshold)
                    "delta": None if delta is None else float(delta),
                    "max_error": max_error, "confidence": confidence,
                    "clamp_negative": clamp_negative, "consistent": consistent, "derive": derive, **extra}
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def _answer(self, kind: str, body: dict[str, Any]) -> QueryAnswer:
        doc = self.request("POST", f"/v1/{kind}", body=body)
        dataset, zoning = body["dataset"], body["zoning"]
        return parse_answer(kind, doc, zoning_loader=lambda: self.zoning(dataset, zoning))

    def flows(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
              hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
              epsilon: float | str | None = None, max_error: float | None = None,
              confidence: float | None = None, clamp_negative: bool | None = None,
              rho: float | str | None = None, consistent: bool | None = None,
              derive: bool | None = None, delta: float | str | None = None) -> QueryAnswer:
        """Origin-destination trip counts between every pair of zones (spends budget). On an approximate-DP
        dataset a domain above its dense_limit (cell-level OD) is released sparsely: only the pairs whose noisy
        count reaches the answer's `threshold`, at the `delta` given (default: the server's)."""
        return self._answer("flows", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive, delta=delta))

    def inflows(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                epsilon: float | str | None = None, max_error: float | None = None, confidence: float | None = None,
                rho: float | str | None = None, case_ref: str | None = None, **options: Any) -> QueryAnswer:
        """Trips arriving in each zone (one noisy value per zone; spends budget)."""
        return self._answer("inflows", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon, max_error=max_error,
            confidence=confidence, clamp_negative=options.pop("clamp_negative", None), rho=rho,
            case_ref=case_ref, **options))

    def outflows(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                 hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                 epsilon: float | str | None = None, max_error: float | None = None, confidence: float | None = None,
                 rho: float | str | None = None, case_ref: str | None = None, **options: Any) -> QueryAnswer:
        """Trips leaving each zone (one noisy value per zone; spends budget)."""
        return self._answer("outflows", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon, max_error=max_error,
            confidence=confidence, clamp_negative=options.pop("clamp_negative", None), rho=rho,
            case_ref=case_ref, **options))

    def residents(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *, place: str,
                  epsilon: float | str | None = None, max_error: float | None = None, confidence: float | None = None,
                  rho: float | str | None = None, **options: Any) -> QueryAnswer:
        """People whose home (place="home") or work cell lies in each zone, per window (whole windows)."""
        return self._answer("residents", self._query_body(
            dataset, zoning, start, end, hours=None, weekdays=None, epsilon=epsilon, max_error=max_error,
            confidence=confidence, clamp_negative=options.pop("clamp_negative", None), rho=rho, place=place,
            **options))

    def commuting(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                  epsilon: float | str | None = None, max_error: float | None = None, confidence: float | None = None,
                  rho: float | str | None = None, case_ref: str | None = None, **options: Any) -> QueryAnswer:
        """Home zone → work zone counts per window (whole windows; spends budget)."""
        return self._answer("commuting", self._query_body(
            dataset, zoning, start, end, hours=None, weekdays=None, epsilon=epsilon, max_error=max_error,
            confidence=confidence, clamp_negative=options.pop("clamp_negative", None), rho=rho,
            case_ref=case_ref, **options))

    def presence(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                 hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                 epsilon: float | str | None = None, max_error: float | None = None,
                 confidence: float | None = None, clamp_negative: bool | None = None,
                 rho: float | str | None = None, consistent: bool | None = None,
                 derive: bool | None = None, delta: float | str | None = None) -> QueryAnswer:
        """Person-hours present per zone and hour of day (spends budget)."""
        return self._answer("presence", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive, delta=delta))

    def patterns(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                 measure: str = "trips", zone: str | None = None,
                 hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                 epsilon: float | str | None = None, max_error: float | None = None,
                 confidence: float | None = None, clamp_negative: bool | None = None,
                 rho: float | str | None = None, consistent: bool | None = None,
                 derive: bool | None = None, delta: float | str | None = None) -> QueryAnswer:
        """Trips or presence per weekday and hour, for one zone or the whole area (spends budget)."""
        return self._answer("patterns", self._query_body(
            dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
            max_error=max_error, confidence=confidence, clamp_negative=clamp_negative, rho=rho,
            consistent=consistent, derive=derive, measure=measure, zone=zone, delta=delta))

    def quote(self, query: str, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
              hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
              epsilon: float | str | None = None, max_error: float | None = None,
              confidence: float | None = None, measure: str | None = None, zone: str | None = None,
              rho: float | str | None = None, derive: bool | None = None, delta: float | str | None = None) -> Quote:
        """What a query would cost and how accurate it would be, and whether it would be released sparsely (with
        which threshold); charges nothing."""
        if query not in QUERY_KINDS:
            raise ValueError(f"query={query!r} must be one of {QUERY_KINDS}")
        body = self._query_body(dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
                                max_error=max_error, confidence=confidence, clamp_negative=None, rho=rho,
                                derive=derive, measure=measure, zone=zone, query=query, delta=delta)
        doc = self.request("POST", "/v1/quote", body=body)
        unit = "rho" if "rho" in doc else "epsilon"  # the quote names its measure by its key
        return Quote(
            epsilon=float(doc[unit]),
            epsilon_charged=float(doc.get(f"{unit}_charged", doc[unit])),
            error_bound_95=float(doc["error_bound_95"]),
            reused=bool(doc.get("reused", False)),
            windows=[WindowCharge.from_json(w) for w in doc.get("windows", [])],
            raw=doc,
            delta=None if doc.get("delta") is None else float(doc["delta"]),
            delta_charged=None if doc.get("delta_charged") is None else float(doc["delta_charged"]),
            release=str(doc.get("release", "dense")),
            threshold=None if doc.get("threshold") is None else int(doc["threshold"]),
        )

    def relative_change(self, dataset: str, zoning: str, start: dt.date | str, end: dt.date | str, *,
                        baseline_start: dt.date | str, baseline_end: dt.date | str,
                        hours: tuple[int, int] | list[int] | None = None, weekdays: list[int] | None = None,
                        epsilon: float | str | None = None, max_error: float | None = None,
                        confidence: float | None = None, rho: float | str | None = None,
                        derive: bool | None = None) -> RelativeChangeAnswer:
        """% change of presence per zone against the same weekdays and hours of a baseline (spends budget)."""
        body = self._query_body(dataset, zoning, start, end, hours=hours, weekdays=weekdays, epsilon=epsilon,
                                max_error=max_error, confidence=confidence, clamp_negative=None, rho=rho,
                                derive=derive, baseline_start=_iso(baseline_start), baseline_end=_iso(baseline_end))
        doc = self.request("POST", "/v1/relative-change", body=body)
        return RelativeChangeAnswer(
            zones=pl.DataFrame(doc["zones"], schema=_ZONE_CHANGE_SCHEMA, orient="row"),
            confidence=float(doc["confidence"]),
            windows=[WindowCharge.from_json(w) for w in doc.get("windows", [])],
            budget_remaining=float(doc["budget_remaining"]),
            current=parse_answer("presence", doc["current"]),
            baseline=parse_answer("presence", doc["baseline"]),
            raw=doc,
        )

    def budget(self, dataset: str) -> Budget:
        """This key's remaining budget on a dataset, per window."""
        doc = self.request("GET", "/v1/budget", params={"dataset": dataset})
        return Budget(dataset=dataset, windows=[BudgetWindow.from_json(w) for w in doc.get("windows", [])], raw=doc)

    def datasets(self) -> list[DatasetInfo]:
        """The datasets this service holds, with time span, windows, bounds and zonings."""
        doc = self.request("GET", "/v1/datasets")
        return [DatasetInfo.from_json(d) for d in (doc["datasets"] if isinstance(doc, dict) else doc)]

    def bounding_report(self, dataset: str) -> dict[str, Any]:
        """Share of records dropped by bounding, quantiles and a suggested bound (admin, planner); free to read."""
        return self.request("GET", f"/v1/datasets/{_seg(dataset)}/bounding-report")

    def zoning(self, dataset: str, zoning: str) -> dict[str, Any]:
        """A public zoning: zones, cells per zone, and geometry/centroids/cells for maps."""
        return dict(self.request("GET", f"/v1/datasets/{_seg(dataset)}/zonings/{_seg(zoning)}"))

    # -- admin --------------------------------------------------------------------------------

    def create_client(self, name: str, role: str) -> IssuedKey:
        """Register a planner, analyst or admin; the returned key is shown only this once."""
        return IssuedKey.from_json(self.request("POST", self.ADMIN_PATHS["clients"], body={"name": name, "role": role}))

    def list_clients(self) -> list[ClientInfo]:
        """Every client with its keys (ids and prefixes only)."""
        doc = self.request("GET", self.ADMIN_PATHS["clients"])
        rows = doc["clients"] if isinstance(doc, dict) else doc
        return [ClientInfo.from_json(r) for r in rows]

    def issue_key(self, client_id: int) -> IssuedKey:
        """A new key for a client (old keys stay valid until revoked)."""
        doc = self.request("POST", self.ADMIN_PATHS["client_keys"].format(client_id=int(client_id)))
        return IssuedKey.from_json(doc)

    def key_id(self, issued: IssuedKey) -> int:
        """The id of an issued key (what revoke_key takes), found by its prefix in list_clients."""
        for info in self.list_clients():
            if info.id == issued.client.id:
                ids = [k.id for k in info.keys if k.prefix == issued.prefix and k.revoked_at is None]
                if len(ids) == 1:
                    return ids[0]
        raise NotFoundError(f"no single active key with prefix {issued.prefix!r} for client {issued.client.id}",
                            code="not_found")

    def revoke_key(self, key_id: int) -> KeyInfo:
        """Revoke one key at once; the client's other keys keep working."""
        return KeyInfo.from_json(self.request("DELETE", self.ADMIN_PATHS["key"].format(key_id=int(key_id))))

    def set_cap(self, dataset: str | None, epsilon: float | str | None = None, *, client_id: int | None = None,
                window: int | None = None, rho: float | str | None = None, group: str | None = None,
                delta: float | str | None = None, population: str | None = None) -> dict[str, Any]:
        """Cap a client's ε (or ρ, zCDP datasets; or ε with `delta`, approximate-DP datasets) per window
        (client_id), a sharing group's allocation (group) or the global cap (neither); all windows if window is
        None. A global cap or allocation is its population's: named through one of its datasets, or by
        `population` (dataset None, windows the population's)."""
        if (epsilon is None) == (rho is None):
            raise ValueError("pass exactly one of epsilon (pure-DP and approx_dp datasets) or rho (zCDP datasets)")
        body: dict[str, Any] = {"epsilon": float(epsilon)} if epsilon is not None else {"rho": float(rho)}  # type: ignore[arg-type]
        if delta is not None:
            body["delta"] = float(delta)
        if dataset is not None:
            body["dataset"] = dataset
        if population is not None:
            body["population"] = population
        if client_id is not None:
            body["client_id"] = int(client_id)
        if group is not None:
            body["group"] = group
        if window is not None:
            body["window"] = int(window)
        return dict(self.request("PUT", self.ADMIN_PATHS["caps"], body=body) or {})

    def set_group(self, client_id: int, group: str | None) -> dict[str, Any]:
        """Put a client in a sharing group (None: alone again); returns the client."""
        return dict(self.request("POST", self.ADMIN_PATHS["groups"],
                                 body={"client_id": int(client_id), "group": group}) or {})

    def add_zoning(self, dataset: str, name: str, csv_text: str, *, coarse: bool = False,
                   min_cells_per_zone: int | None = None, geometry: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Load a public zoning from `cell_id,zone_id` CSV text (and optional GeoJSON polygons); a coarse
        zoning's minimum defaults to the server's."""
        body: dict[str, Any] = {"name": name, "csv": csv_text, "coarse": coarse}
        if min_cells_per_zone is not None:
            body["min_cells_per_zone"] = min_cells_per_zone
        if geometry is not None:
            body["geojson"] = dict(geometry)
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def add_zoning_from_polygons(self, dataset: str, name: str, geojson: Mapping[str, Any], id_field: str, *,
                                 coarse: bool = False, min_cells_per_zone: int | None = None) -> dict[str, Any]:
        """Load a zoning from GeoJSON polygons: each cell to the polygon covering it, else the nearest.

        The answer lists the cells sent to the nearest polygon (``assigned_to_nearest``, with the
        distance) and the polygons holding no cell (``empty_polygons``, not zones).
        """
        body: dict[str, Any] = {"name": name, "geojson": dict(geojson), "id_field": id_field, "coarse": coarse}
        if min_cells_per_zone is not None:
            body["min_cells_per_zone"] = min_cells_per_zone
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def add_grid_zoning(self, dataset: str, name: str, km: float, *, coarse: bool = False,
                        min_cells_per_zone: int | None = None) -> dict[str, Any]:
        """Load a square grid of side ``km`` over the cell catalog's extent (zones: squares holding a cell)."""
        body: dict[str, Any] = {"name": name, "grid_km": km, "coarse": coarse}
        if min_cells_per_zone is not None:
            body["min_cells_per_zone"] = min_cells_per_zone
        return dict(self.request("POST", self.ADMIN_PATHS["zonings"].format(dataset=_seg(dataset)), body=body))

    def audit(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Audit rows after ``after_id``, oldest first (who asked what, when, at what ε, outcome; never values)."""
        doc = self.request("GET", self.ADMIN_PATHS["audit"], params={"after_id": after_id, "limit": limit})
        return list(doc["entries"] if isinstance(doc, dict) else doc)

    def audit_all(self, *, page: int = 1000) -> list[dict[str, Any]]:
        """The whole audit log, page by page."""
        rows: list[dict[str, Any]] = []
        after = 0
        while True:
            doc = self.request("GET", self.ADMIN_PATHS["audit"], params={"after_id": after, "limit": page})
            rows.extend(doc["entries"])
            if doc.get("next_after_id") is None:
                return rows
            after = int(doc["next_after_id"])


def _seg(name: str) -> str:
    return urllib.parse.quote(str(name), safe="")
