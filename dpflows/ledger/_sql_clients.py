"""The SQL ledger's registry of clients, their sharing groups and their keys (a part of `SqlLedger`)."""

from __future__ import annotations

from typing import Any

from dpflows.errors import Conflict, InvalidInput, NotFound
from dpflows.ledger._sql_base import _CLIENT_SELECT, SqlBase, utc_now
from dpflows.ledger.base import (
    ROLES,
    ApiKeyRecord,
    Client,
    check_group_name,
)


class ClientRegistry(SqlBase):
    """Clients, groups and keys: portable SQL over the subclass's transaction."""

    # -- clients and keys -------------------------------------------------------------------

    def create_client(self, name: str, role: str) -> Client:
        if role not in ROLES:
            raise InvalidInput(f"role={role!r} is not a role; use one of {list(ROLES)}", field="role")
        if not name or len(name) > 128:
            raise InvalidInput(f"name={name!r} must be 1-128 characters", field="name")
        at = utc_now()
        try:
            with self._transaction(write=True) as cur:
                cur.execute("INSERT INTO clients (name, role, created_at) VALUES (?, ?, ?)", (name, role, at))
                cur.execute("SELECT id FROM clients WHERE name = ?", (name,))
                (client_id,) = cur.fetchone()
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise Conflict(f"name={name!r} is taken by another client; choose another name", field="name") from exc
            raise
        return Client(int(client_id), name, role, at)

    def _client_from_row(self, row: Any) -> Client:
        return Client(int(row[0]), row[1], row[2], row[3], row[4])

    def set_group(self, client_id: int, group: str | None) -> Client:
        """Put a client in a sharing group, or (None) back alone; its past answers stay in the group they
        were released in."""
        if group is not None:
            check_group_name(group)
        self.get_client(client_id)
        with self._transaction(write=True) as cur:
            self._lock_allocations(cur, exclusive=True)  # a charge reads the group once, under the shared lock
            if group is None:
                cur.execute("DELETE FROM client_groups WHERE client_id = ?", (client_id,))
            else:
                cur.execute(
                    "INSERT INTO client_groups (client_id, group_name, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (client_id) DO UPDATE SET group_name = excluded.group_name, "
                    "updated_at = excluded.updated_at",
                    (client_id, group, utc_now()),
                )
        return self.get_client(client_id)

    def get_client(self, client_id: int) -> Client:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} WHERE c.id = ?", (client_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"client id={client_id} does not exist", field="client_id")
        return self._client_from_row(row)

    def client_by_name(self, name: str) -> Client:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} WHERE c.name = ?", (name,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"client name={name!r} does not exist", field="name")
        return self._client_from_row(row)

    def list_clients(self) -> list[Client]:
        with self._transaction(write=False) as cur:
            cur.execute(f"{_CLIENT_SELECT} ORDER BY c.id")
            return [self._client_from_row(r) for r in cur.fetchall()]

    def add_key(self, client_id: int, key_hash: str, prefix: str) -> ApiKeyRecord:
        self.get_client(client_id)
        at = utc_now()
        with self._transaction(write=True) as cur:
            cur.execute(
                "INSERT INTO api_keys (client_id, key_hash, prefix, created_at) VALUES (?, ?, ?, ?)",
                (client_id, key_hash, prefix, at),
            )
            cur.execute("SELECT id FROM api_keys WHERE key_hash = ?", (key_hash,))
            (key_id,) = cur.fetchone()
        return ApiKeyRecord(int(key_id), client_id, prefix, at, None)

    def client_for_key_hash(self, key_hash: str) -> Client | None:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT c.id, c.name, c.role, c.created_at, g.group_name FROM api_keys k "
                "JOIN clients c ON c.id = k.client_id LEFT JOIN client_groups g ON g.client_id = c.id "
                "WHERE k.key_hash = ? AND k.revoked_at IS NULL",
                (key_hash,),
            )
            row = cur.fetchone()
        return None if row is None else self._client_from_row(row)

    def list_keys(self, client_id: int) -> list[ApiKeyRecord]:
        with self._transaction(write=False) as cur:
            cur.execute(
                "SELECT id, client_id, prefix, created_at, revoked_at FROM api_keys WHERE client_id = ? ORDER BY id",
                (client_id,),
            )
            return [ApiKeyRecord(int(r[0]), int(r[1]), r[2], r[3], r[4]) for r in cur.fetchall()]

    def revoke_key(self, key_id: int) -> ApiKeyRecord:
        with self._transaction(write=True) as cur:
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (utc_now(), key_id))
            cur.execute("SELECT id, client_id, prefix, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
            row = cur.fetchone()
        if row is None:
            raise NotFound(f"key id={key_id} does not exist", field="key_id")
        return ApiKeyRecord(int(row[0]), int(row[1]), row[2], row[3], row[4])
