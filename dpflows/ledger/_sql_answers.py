"""The SQL ledger's stored answers: reading them back, their shapes (the index of free derivations), and
deleting those of retired windows (a part of `SqlLedger`; releasing them is `SqlLedger.commit_release`)."""

from __future__ import annotations

from typing import Any

import orjson

from dpflows.ledger._sql_base import Cursor, SqlBase
from dpflows.ledger._sql_rules import _SHAPE_COLUMNS, _shape_from_row
from dpflows.ledger.base import AnswerShape, ShapeFilter, StoredAnswer


class AnswerStore(SqlBase):
    """Stored answers: portable SQL over the subclass's transaction."""

    def _answer_from_row(self, row: Any) -> StoredAnswer:
        # orjson: a 10,000-key payload parses ~5× faster than with the stdlib, on every reuse
        return StoredAnswer(row[0], row[1], row[2], int(row[3]), orjson.loads(row[4]), row[5])

    def _find_answer(self, cur: Cursor, dataset: str, query_key: str) -> StoredAnswer | None:
        cur.execute(
            "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers "
            "WHERE dataset = ? AND query_key = ?",
            (dataset, query_key),
        )
        row = cur.fetchone()
        return None if row is None else self._answer_from_row(row)

    def find_answer(self, dataset: str, query_key: str) -> StoredAnswer | None:
        with self._transaction(write=False) as cur:
            return self._find_answer(cur, dataset, query_key)

    def get_answer(self, answer_id: str) -> StoredAnswer | None:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers WHERE answer_id = ?",
                (answer_id,),
            )
            row = cur.fetchone()
        return None if row is None else self._answer_from_row(row)

    def list_answers(self, dataset: str, kind: str | None = None) -> list[StoredAnswer]:
        """Released answers of a dataset, oldest first: candidates for free derived answers.

        The kind lives inside the JSON payload (``payload["query"]["kind"]``), so it is filtered
        here rather than in SQL: portable across SQLite and PostgreSQL, no schema change.
        """
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT answer_id, dataset, query_key, client_id, payload, created_at FROM answers "
                "WHERE dataset = ? ORDER BY created_at, answer_id",
                (dataset,),
            )
            rows = cur.fetchall()
        answers = [self._answer_from_row(r) for r in rows]
        return [a for a in answers if kind is None or (a.payload.get("query") or {}).get("kind") == kind]

    def delete_answers(self, dataset: str, before_window: int, *, keep_client: int | None = None) -> int:
        """Delete the stored answers (and shapes) of `dataset` that count a window before `before_window`:
        retired windows' released values leave the ledger (`keep_client`'s stay: the bounding-report
        charges, which hold no value). Charges and audit rows are append-only and stay."""
        with self._transaction(write=True) as cur:
            # the charges stay: only answers still stored are found (and counted), so a second run deletes none
            cur.execute("SELECT DISTINCT c.answer_id FROM charges c JOIN answers a ON a.answer_id = c.answer_id "
                        "WHERE c.dataset = ? AND c.win < ? AND c.client_id <> ?",
                        (dataset, before_window, -1 if keep_client is None else keep_client))
            ids = [str(row[0]) for row in cur.fetchall()]
            for answer_id in ids:
                cur.execute("DELETE FROM answer_shapes WHERE answer_id = ?", (answer_id,))
                cur.execute("DELETE FROM answers WHERE answer_id = ?", (answer_id,))
        return len(ids)

    def find_answer_shapes(self, dataset: str, where: ShapeFilter) -> list[AnswerShape]:
        """Shapes of the stored answers `where` admits, ranked in SQL (`ShapeFilter`); payloads untouched.

        The index (dataset, kind, data_version, start_day, end_day, zoning, noise_scale) narrows
        the rows to one question's dates; the masks are tested in SQL, and ROW_NUMBER keeps the
        best `per_zoning` of each zoning, so at most `limit` rows leave the database however many
        answers a client has stored.
        """
        if not where.zonings or not where.mechanisms or where.limit < 1 or where.per_zoning < 1:
            return []
        zonings = ", ".join("?" * len(where.zonings))
        mechanisms = ", ".join("?" * len(where.mechanisms))
        hours = "hours_mask = ?" if where.hours_exact else "(hours_mask & ?) = ?"
        weekdays = "weekdays_mask = ?" if where.weekdays_exact else "(weekdays_mask & ?) = ?"
        params: list[Any] = [dataset, where.kind, where.data_version, where.start, where.end, where.unit,
                             where.max_loss_nanos, *where.zonings, *where.mechanisms]
        params += [where.hours_mask] if where.hours_exact else [where.hours_mask, where.hours_mask]
        params += [where.weekdays_mask] if where.weekdays_exact else [where.weekdays_mask, where.weekdays_mask]
        pattern = ""
        if where.pattern is not None:
            pattern = " AND measure = ? AND zone_id = ?"
            params += list(where.pattern)
        params.append(where.group)
        params += [where.per_zoning, where.limit]
        with self._transaction(write=False) as cur:
            cur.execute(
                f"SELECT {_SHAPE_COLUMNS} FROM ("  # noqa: S608 -- only placeholders are interpolated
                f"SELECT {_SHAPE_COLUMNS}, ROW_NUMBER() OVER (PARTITION BY zoning "
                "ORDER BY noise_scale, created_at, answer_id) AS pos FROM answer_shapes "
                "WHERE dataset = ? AND kind = ? AND data_version = ? AND start_day = ? AND end_day = ? AND unit = ? "
                f"AND loss_nanos <= ? AND zoning IN ({zonings}) AND mechanism IN ({mechanisms}) "
                f"AND {hours} AND {weekdays}{pattern} AND share_group = ?"
                ") ranked WHERE pos <= ? ORDER BY noise_scale, created_at, answer_id LIMIT ?",
                tuple(params),
            )
            return [_shape_from_row(r) for r in cur.fetchall()]
