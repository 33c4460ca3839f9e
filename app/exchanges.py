"""The LLM exchange log and response cache, in the database (``llm_exchanges``, schema 7).

Every answered request to the LLM server is kept: what was sent (the body, never a
header or the key), what came back, status, tokens, latency and time. That gives a
researcher the exact prompt and reply behind every name (``show topic ID --prompt``),
and it is the cache: a request whose answer is already kept is not sent again. A run
resumed inside the theme stage, a theme stage redone with other settings and a second
run over the same topics therefore pay only for what is new.

A request is known by ``request_key``: a hash of what shapes the answer (model,
messages, temperature, token limit), not of how the server had to be asked
(``max_tokens`` or ``max_completion_tokens``, with or without ``response_format``), so a
server's refusals do not split the cache.
"""

from __future__ import annotations

import hashlib
import json

import asyncpg

from app.database import with_connection_retry

# The request body fields that change the answer; the token limit under either name.
_ANSWER_FIELDS = ("model", "messages", "temperature")
_TOKEN_FIELDS = ("max_completion_tokens", "max_tokens")


def request_key(payload: dict) -> str:
    """The cache key of a chat-completion request body: the SHA-256 (hex) of its model,
    messages, temperature and token limit, as canonical JSON."""
    shaping = {field: payload.get(field) for field in _ANSWER_FIELDS}
    shaping["token_limit"] = next((payload[f] for f in _TOKEN_FIELDS if f in payload), None)
    canonical = json.dumps(shaping, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ExchangeLog:
    """The exchanges of one run: ``record`` each answered request, ``cached`` a usable
    answer kept earlier (by any run), unless ``use_cache`` is off.

    Takes the pool and the run's id. Writes are retried over a dropped connection like
    the run's own (``with_connection_retry``)."""

    def __init__(self, pool: asyncpg.Pool, run_id: int, *, use_cache: bool = True,
                 window_s: float | None = None) -> None:
        self._pool = pool
        self._window_s = window_s  # how long a lost connection is retried (DB_RETRY_WINDOW_S)
        self.run_id = run_id
        self.use_cache = use_cache

    async def cached(self, key: str) -> str | None:
        """The reply body of the latest usable exchange with this key, or None (also when
        the cache is off)."""
        if not self.use_cache:
            return None
        return await with_connection_retry(
            self._pool,
            lambda conn: conn.fetchval(
                "SELECT reply FROM llm_exchanges WHERE request_key = $1 AND usable ORDER BY exchange_id DESC LIMIT 1",
                key),
            what="read the LLM cache", window_s=self._window_s,
        )

    async def record(self, *, key: str, payload: dict, status: int, reply: str, usable: bool,
                     latency_s: float, subject: str | None, usage: dict | None = None) -> None:
        """Keep one answered request. ``payload`` is the body sent (no header is ever
        passed here); ``usage`` the reply's token counts where it gave them."""
        usage = usage if isinstance(usage, dict) else {}

        def tokens(name: str) -> int | None:
            value = usage.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        await with_connection_retry(
            self._pool,
            lambda conn: conn.execute(
                "INSERT INTO llm_exchanges (request_key, run_id, subject, model, request, status, reply, usable,"
                " prompt_tokens, completion_tokens, latency_ms)"
                " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11)",
                key, self.run_id, subject, str(payload.get("model")), payload, status, reply, usable,
                tokens("prompt_tokens"), tokens("completion_tokens"), max(0, round(latency_s * 1000)),
            ),
            what="record an LLM exchange", window_s=self._window_s,
        )


# What the database (or the driver, encoding the text) refuses in a value: a reply that
# led to one of these is not to be served from the log again.
UNSTORABLE = (asyncpg.DataError, UnicodeError)


async def forget_replies(conn: asyncpg.Connection, keys) -> None:
    """Mark the exchanges with these request keys (None ones are skipped) unusable, so the
    cache never serves them again: called when names from them could not be stored. Every
    name of the failed write is forgotten, as which one was refused is not known; the
    good ones cost a request each to ask again."""
    keys = sorted({key for key in keys if key})
    if keys:
        await conn.execute("UPDATE llm_exchanges SET usable = false WHERE request_key = ANY($1::text[]) AND usable",
                           keys)


async def exchange_for(conn: asyncpg.Connection, key: str | None) -> asyncpg.Record | None:
    """The usable exchange behind a name (its ``name_request``), latest first; None for a
    keyword name or an exchange no longer kept."""
    if key is None:
        return None
    return await conn.fetchrow(
        "SELECT exchange_id, run_id, subject, model, request, status, reply, prompt_tokens, completion_tokens,"
        " latency_ms, created_at FROM llm_exchanges WHERE request_key = $1 AND usable"
        " ORDER BY exchange_id DESC LIMIT 1", key)
