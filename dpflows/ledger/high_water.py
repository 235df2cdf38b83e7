"""A spend high-water mark kept apart from the ledger: restoring an old ledger backup must not reset spending.

Charges and audit rows are append-only, so their counts only grow. The mark file (outside the
ledger: by default in the data root) keeps the largest counts seen. At start the service
compares: a ledger holding fewer rows than the mark was restored from the past, and every
charge made since that backup would be forgotten, so the service refuses to start until an
operator decides (restore the newer ledger, or accept the loss explicitly by removing the mark
with the reason written down). The mark is refreshed at start and at most every
`REFRESH_SECONDS` after releases, so a restore can hide at most that window's charges.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from dpflows.errors import Unavailable
from dpflows.ledger.base import Ledger

REFRESH_SECONDS = 5.0


class HighWaterMark:
    """The mark file of one service: `check` at start, `note` after releases (cheap, throttled)."""

    def __init__(self, path: str | Path, ledger: Ledger) -> None:
        self.path = Path(path)
        self.ledger = ledger
        self._lock = threading.Lock()
        self._last = 0.0

    def _read(self) -> tuple[int, int]:
        try:
            doc = json.loads(self.path.read_text())
            return int(doc["charges"]), int(doc["audit"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError) as exc:
            raise Unavailable(f"the spend high-water mark {self.path.name} is unreadable; restore it or remove it "
                              "once you have checked the ledger is the newest") from exc

    def _write(self, mark: tuple[int, int]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps({"charges": mark[0], "audit": mark[1]}))
            tmp.chmod(0o600)
            tmp.replace(self.path)
        except OSError as exc:
            raise Unavailable(f"the spend high-water mark {self.path.name} cannot be written ({type(exc).__name__}); "
                              "point DPFLOWS_HIGH_WATER_FILE at a writable path outside the ledger") from exc

    def check(self) -> tuple[int, int]:
        """Refuse a ledger that holds less than was seen before; then raise the mark to what it holds."""
        with self._lock:
            seen = self._read()
            now = self.ledger.high_water()
            if now[0] < seen[0] or now[1] < seen[1]:
                raise Unavailable(
                    f"the ledger holds {now[0]} charge rows and {now[1]} audit rows, fewer than the {seen[0]} and "
                    f"{seen[1]} it held before: it looks restored from an older backup, which would forget charges "
                    f"and let budgets be spent again. Restore the newest ledger; or, if the loss is understood and "
                    f"accepted, record why and remove {self.path}"
                )
            self._write((max(now[0], seen[0]), max(now[1], seen[1])))
            self._last = time.monotonic()
            return now

    def note(self) -> None:
        """After a release: raise the mark, at most once every REFRESH_SECONDS."""
        if time.monotonic() - self._last < REFRESH_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._last < REFRESH_SECONDS:
                return
            self._last = time.monotonic()
            seen = self._read()
            now = self.ledger.high_water()
            self._write((max(now[0], seen[0]), max(now[1], seen[1])))


def default_path(ledger_url: str, data_dir: str | Path) -> Path:
    """Beside a SQLite ledger file (a restore replaces the file, not its neighbour); else in the data root."""
    if ledger_url.startswith("sqlite:///"):
        return Path(ledger_url.removeprefix("sqlite:///") + ".high-water")
    return Path(data_dir) / ".ledger-high-water.json"
