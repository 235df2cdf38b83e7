"""One settings table, read and validated once: the app factory, the CLI and gunicorn use it.

Every ``DPFLOWS_*`` environment variable is declared here with its default and what it is for
(Datasette's SETTINGS are the model); nothing else reads the environment. `dpflows settings`
prints the table with the values in force. A bad value fails at start, naming the variable and
the fix, never at the first request.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dpflows.budget import Epsilon, Rho, parse_delta
from dpflows.errors import InvalidInput


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a finite positive number")
    return value


def _loss_list(parse: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse_list(text: str) -> tuple[Any, ...]:
        return tuple(parse(part.strip()) for part in text.split(",") if part.strip())
    return parse_list


def _default_workers() -> str:
    return str(min(2 * multiprocessing.cpu_count() + 1, 9))


@dataclass(frozen=True)
class Setting:
    """One environment variable: its default (a string, as the environment holds it) and meaning."""

    name: str
    default: str | Callable[[], str]
    help: str
    parse: Callable[[str], Any] = str

    @property
    def key(self) -> str:
        """The attribute name on `Settings`: DPFLOWS_DATA_DIR -> data_dir."""
        return self.name.removeprefix("DPFLOWS_").lower()

    def default_text(self) -> str:
        return self.default() if callable(self.default) else self.default


SETTINGS: tuple[Setting, ...] = (
    Setting("DPFLOWS_DATA_DIR", "./var/data", "aggregate store root (datasets/<name>/ below it)"),
    Setting("DPFLOWS_LEDGER_URL", "sqlite:///./var/ledger.db",
            "the budget ledger: sqlite:///PATH (one host) or postgresql://... (several hosts); put a password "
            "here, never on a command line"),
    Setting("DPFLOWS_PLANNER_MAX_EPSILON", "1", "per-query epsilon cap of role planner", Epsilon.parse),
    Setting("DPFLOWS_ANALYST_MAX_EPSILON", "0.25", "per-query epsilon cap of role analyst", Epsilon.parse),
    Setting("DPFLOWS_PLANNER_MAX_RHO", "", "per-query rho cap of role planner on zCDP datasets (default: "
            "epsilon^2/2 of the planner's epsilon cap, what an epsilon-DP release costs in rho)"),
    Setting("DPFLOWS_ANALYST_MAX_RHO", "", "per-query rho cap of role analyst on zCDP datasets (default: "
            "epsilon^2/2 of the analyst's epsilon cap)"),
    Setting("DPFLOWS_DEFAULT_DELTA", "1e-9", "the delta a sparse answer (approximate-DP datasets, domains above the "
            "dataset's dense_limit) spends when the query sends none: it sets the threshold (docs/privacy.md)",
            parse_delta),
    Setting("DPFLOWS_PLANNER_MAX_DELTA", "1e-7", "per-query delta cap of role planner on approximate-DP datasets",
            parse_delta),
    Setting("DPFLOWS_ANALYST_MAX_DELTA", "1e-9", "per-query delta cap of role analyst on approximate-DP datasets",
            parse_delta),
    Setting("DPFLOWS_MIN_EPSILON", "0.0001", "the smallest epsilon one query may charge (and a max_error that it "
            "already meets is refused): each stored answer costs at least this", Epsilon.parse),
    Setting("DPFLOWS_MIN_RHO", "0.000001", "the smallest rho one query may charge on zCDP datasets", Rho.parse),
    Setting("DPFLOWS_DERIVE_CANDIDATES", "16", "stored answers a derive=true query or quote ranks (the best of each "
            "zoning that sums into the asked one, chosen by shape in the ledger); only the chosen one is read",
            _positive_int),
    Setting("DPFLOWS_MIN_CELLS_PER_COARSE_ZONE", "10", "a zoning analysts may query (coarse) must hold at least "
            "this many cells in every zone; checked at upload and at query time", _positive_int),
    Setting("DPFLOWS_HIGH_WATER_FILE", "", "where the spend high-water mark is kept, apart from the ledger (default: "
            "beside a SQLite ledger file, else in the data root); a ledger holding fewer charges than it is refused"),
    Setting("DPFLOWS_RATE_LIMIT", "50", "requests per second per API key, shared by all workers of a host",
            _positive_float),
    Setting("DPFLOWS_RATE_BURST", "100", "burst of requests allowed above the rate", _positive_int),
    Setting("DPFLOWS_AUTH_FAILURE_LIMIT", "1", "failed authentications per second per client address",
            _positive_float),
    Setting("DPFLOWS_AUTH_FAILURE_BURST", "20", "burst of failed authentications per client address", _positive_int),
    Setting("DPFLOWS_TRUSTED_PROXIES", "127.0.0.1,::1,unix",
            "peers (nginx) whose X-Real-IP / X-Forwarded-For name the client address"),
    Setting("DPFLOWS_RATE_LIMIT_DB", "", "the rate limiter's SQLite file (default: beside a SQLite ledger, else a "
            "private temporary directory); see api/ratelimit.py"),
    Setting("DPFLOWS_MAX_UPLOAD_BYTES", str(32 * 1024 * 1024),
            "largest body of an admin's zoning upload, which may carry GeoJSON polygons (every other request: "
            "1 MiB; behind nginx, deploy/nginx.conf allows as much for that route)", _positive_int),
    Setting("DPFLOWS_NOISE_POOL_VALUES", "0", "pre-drawn noise values each process may hold (8 bytes each), split "
            "evenly over the stocked scales and refilled by a background thread from the same OpenDP measurement; "
            "0: no pool, every draw at request time (dpflows/noise_pool.py)", _non_negative_int),
    Setting("DPFLOWS_NOISE_POOL_EPSILONS", "", "comma-separated epsilons whose noise the pool pre-draws for every "
            "pure-DP dataset's bounds (public presets; default: the role caps)", _loss_list(Epsilon.parse)),
    Setting("DPFLOWS_NOISE_POOL_RHOS", "", "comma-separated rhos whose noise the pool pre-draws for every zCDP "
            "dataset (default: the role caps)", _loss_list(Rho.parse)),
    Setting("DPFLOWS_ANSWER_CACHE_BYTES", str(64 * 1024 * 1024), "rendered answer bodies each worker process keeps, "
            "in bytes, to serve reused answers without rebuilding them (per sharing group, least recently used "
            "dropped first; api/body_cache.py); 0: none", _non_negative_int),
    Setting("DPFLOWS_FLOW_KEYS_BYTES", str(32 * 1024 * 1024), "each trip row's origin-destination zone pair, "
            "precomputed per window and zoning after start (8 bytes a row, newest windows first, up to this many "
            "bytes per worker process) so that a flows answer counts in one pass (dpflows/counting.py); private "
            "memory of each worker, beside the shared window files; 0: none",
            _non_negative_int),
    Setting("DPFLOWS_AUDIT_FLUSH_MS", "200", "audit rows of reused and derived answers (free) are written in one "
            "transaction per process at most this many milliseconds after the answer, instead of one fsync each "
            "(dpflows/ledger/audit_queue.py)", _positive_int),
    Setting("DPFLOWS_AUDIT_QUEUE_ROWS", "1000", "at most this many such rows wait per process: a crash loses at most "
            "these; when full, the next reuse writes them first", _positive_int),
    Setting("DPFLOWS_BIND", "127.0.0.1:8000", "address gunicorn listens on (dpflows serve --bind)"),
    Setting("DPFLOWS_WORKERS", _default_workers, "gunicorn worker processes (default 2 x cores + 1, at most 9)",
            _positive_int),
    Setting("DPFLOWS_TIMEOUT", "60", "seconds before gunicorn restarts a silent worker", _positive_int),
    Setting("DPFLOWS_GRACEFUL_TIMEOUT", "30", "seconds a worker gets to finish on restart", _positive_int),
    Setting("DPFLOWS_MAX_REQUESTS", "0", "restart a worker after this many requests (0: never)", _non_negative_int),
    Setting("DPFLOWS_LOG_LEVEL", "info", "gunicorn's log level"),
    Setting("DPFLOWS_CONTROL_SOCKET", "", "gunicorn control socket path of this instance (empty: none)"),
)
_BY_NAME = {s.name: s for s in SETTINGS}


class Settings:
    """The validated values, as attributes named after the variables (`settings.ledger_url`)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def as_config(self) -> dict[str, Any]:
        """The values keyed by variable name (the app's config keys)."""
        return {s.name: self._values[s.key] for s in SETTINGS}


def rho_cap_following(epsilon: Epsilon) -> Rho:
    """An ε-DP release is (ε²/2)-zCDP (Bun and Steinke 2016): the ρ cap that allows as much per query."""
    return Rho.parse(epsilon.as_fraction() ** 2 / 2) if epsilon.nanos else Rho.zero()


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the environment, then `overrides` (an app factory's config), each validated."""
    env = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = sorted(k for k in overrides if k.startswith("DPFLOWS_") and k not in _BY_NAME)
    if unknown:
        raise InvalidInput(f"unknown setting(s) {unknown}; see `dpflows settings` for the names", field=unknown[0])
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = overrides.get(setting.name, env.get(setting.name, setting.default_text()))
        values[setting.key] = _parse(setting, raw)
    for role in ("planner", "analyst"):
        key = f"{role}_max_rho"
        values[key] = (rho_cap_following(values[f"{role}_max_epsilon"]) if values[key] in ("", None)
                       else _parse_rho(_BY_NAME[f"DPFLOWS_{role.upper()}_MAX_RHO"], values[key]))
    return Settings(values)


def _parse(setting: Setting, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw  # already a value (an app factory's config in tests)
    try:
        return setting.parse(raw.strip())
    except (ValueError, InvalidInput) as exc:
        raise InvalidInput(f"{setting.name}={raw!r} is not valid ({exc}); {setting.help}; default "
                           f"{setting.default_text()!r}", field=setting.name) from None


def _parse_rho(setting: Setting, raw: Any) -> Rho:
    if isinstance(raw, Rho):
        return raw
    try:
        return Rho.parse(raw if isinstance(raw, Fraction) else str(raw))
    except InvalidInput as exc:
        raise InvalidInput(f"{setting.name}={raw!r} is not valid ({exc.message}); {setting.help}",
                           field=setting.name) from None


def environment_value(name: str) -> str | None:
    """A setting's value only if the environment sets it (commands that must be told, like migrate)."""
    if name not in _BY_NAME:
        raise KeyError(name)
    return os.environ.get(name)


def describe(settings: Settings) -> list[dict[str, str]]:
    """The table `dpflows settings` prints: name, value in force, default, help. The ledger URL is masked."""
    rows = []
    for s in SETTINGS:
        value = settings._values[s.key]
        shown = "(set)" if s.name == "DPFLOWS_LEDGER_URL" and "@" in str(value) else str(value)
        rows.append({"name": s.name, "value": shown, "default": s.default_text(), "help": s.help})
    return rows
