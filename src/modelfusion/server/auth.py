"""Bearer-key auth, on when FUSION_API_KEYS (or FUSION_ADMIN_KEYS) is set, and who a key is.

A request's `Caller` says which key made it, as an id (`key_id`: never the key itself), so
traces can be kept per key: a key sees the traces it made, an admin key (or a server
without keys) sees every one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from .errors import ApiError

# A key's id is stored beside every trace it made, where whoever reads the database sees
# it. A slow, salted hash: a weak key ("key1") is not recovered from its id in an instant.
# The salt is fixed (not per server): replicas sharing a PostgreSQL store, and a restarted
# server, must give a key the same id.
_ID_SALT = b"modelfusion trace owner v1"
_ID_ROUNDS = 100_000
ID_CHARS = 24  # hex characters: 96 bits, no two keys of one server share an id


def key_id(key: str) -> str:
    """The id a key's traces are stored under."""
    digest = hashlib.pbkdf2_hmac("sha256", key.encode(), _ID_SALT, _ID_ROUNDS)
    return digest.hex()[:ID_CHARS]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the id of its key (None when auth is off) and whether it may read
    every trace (an admin key, or no auth at all: then anyone may, as before keys)."""

    owner: str | None
    admin: bool

    @property
    def scope(self) -> str | None:
        """The owner whose traces this caller may read; None: every trace."""
        return None if self.admin else self.owner


ANYONE = Caller(owner=None, admin=True)


class Keys:
    """The server's keys, each with its id worked out once (the hash is slow on purpose)."""

    def __init__(self, keys: tuple[str, ...], admin_keys: tuple[str, ...] = ()) -> None:
        admins = set(admin_keys)
        # Admin keys come after the others, each key once: check() compares with all.
        ordered = [*dict.fromkeys([*keys, *admin_keys])]
        self._keys = [(k.encode(), Caller(key_id(k), k in admins)) for k in ordered]

    def check(self, request: Request) -> Caller:
        if not self._keys:
            return ANYONE
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        token_b = token.strip().encode()
        # Compare with every key, without stopping at a match: timing says nothing about
        # which (nor whether an admin key matched).
        caller: Caller | None = None
        for key, who in self._keys:
            if hmac.compare_digest(token_b, key):
                caller = who
        if caller is None:
            raise ApiError(401, "incorrect API key", code="invalid_api_key")
        return caller
