"""The LLM namer: names topics and themes through an OpenAI-compatible chat-completions API.

xAI's API is the default (``XAI_BASE_URL``), but any server that speaks the same protocol
works, including the fake one the tests start.

How it behaves, in short (``docs/naming.md`` has the long version):

* **One semaphore** (``LLM_CONCURRENCY``) covers every request of the run, topics and
  themes alike, so the API's rate limits are respected however many firms are in flight.
  A request holds it only while on the wire, not while waiting to retry.
* **Fail fast at start, but not on a busy server**: ``check()`` sends one tiny request
  before any GPU work; a bad key, an unknown model or an address nothing listens on
  raises ``LLMConfigError`` then, rather than as a fallback on every topic an hour later.
  A busy answer (429, 5xx, a timeout) is waited out for ``LLM_START_BUDGET_S``; after
  that the run starts anyway, and each topic's own retries and keyword fallback apply.
* **Any OpenAI-compatible server**: the token limit goes as ``max_completion_tokens``
  (newer OpenAI models refuse ``max_tokens``) and JSON is asked for with
  ``response_format``; a server that refuses either with a 400 naming it gets
  ``max_tokens`` / no ``response_format`` from then on, for the rest of the run. No key
  is needed for a server on this machine or a private network.
* **Retries like a good client**: connection errors, timeouts, 408, 409, 429 and 5xx are
  retried with exponential backoff and jitter, honouring ``Retry-After`` and
  ``retry-after-ms``; an unusable reply (no JSON label, or a body over
  ``MAX_REPLY_BYTES``, never read whole) is retried too. Attempts are bounded
  (``LLM_MAX_ATTEMPTS``).
* **Never aborts the run for one topic**: after its last attempt a topic gets the offline
  keyword label (``source = "keywords"``) and the failure is counted.
* **Stops when the money is gone**: a reply saying the quota or credits are exhausted (or
  that the key is no longer accepted) is not retried; no further request is sent this run,
  and every remaining topic and theme gets its keyword label. One loud error is logged.
* **Never pays twice**: every answered request of a run is kept in the database
  (``app.exchanges``), and a request already answered usably is answered from there, with
  no network call (``LLM_CACHE=off`` sends every one).
* **Secrets**: the API key is sent only in the ``Authorization`` header; every text that
  could reach a log line or an exception passes through ``app.settings.redact``; no
  header is ever kept.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, nullcontext
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import aiohttp

from app import prompts
from app.claims import LLMSlots
from app.errors import ExpectedFailure
from app.exchanges import ExchangeLog, request_key
from app.logs import get_logger
from app.naming import (
    Label,
    Namer,
    OfflineNamer,
    ThemeToName,
    TopicToName,
    theme_label_from_keywords,
    topic_label_from_keywords,
)
from app.settings import Settings, redact

# Connecting should take well under a second; a long wait means the server is not there.
CONNECT_TIMEOUT_S = 10.0
# The start-up check asks for a one-word reply: a few tokens are plenty.
CHECK_MAX_TOKENS = 5
# A reply is a few hundred bytes; a body larger than this is no answer, and is not read
# further (a broken or hostile server must not fill memory).
MAX_REPLY_BYTES = 1_000_000
READ_CHUNK_BYTES = 64 * 1024
# Statuses that say "try again later" (RFC 9110 and the OpenAI/xAI error guides).
RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))

# Kinds of failed request, which decide what happens next.
RETRY = "retry"  # transient: wait and try again
QUOTA = "quota"  # credits or quota exhausted: stop calling for the rest of the run
AUTH = "auth"  # the key is not accepted: stop calling (at start: LLMConfigError)
MODEL = "model"  # the model does not exist or the key cannot use it
REJECTED = "rejected"  # this request cannot succeed (e.g. too long): give up on it only

# A quota or billing problem, as xAI ("used all available credits or reached its monthly
# spending limit"), OpenAI ("exceeded your current quota ... billing details",
# "insufficient_quota") and others word it ...
_QUOTA_WORDS = re.compile(
    r"quota|credit|billing|spending limit|exhausted|insufficient[ _](?:balance|funds)|payment required", re.I
)
# ... unless the text says it is a per-minute rate limit, which passes with time.
_RATE_LIMIT_WORDS = re.compile(
    r"rate[ _-]?limit|per (?:second|minute|min\b)|requests per|tokens per|too many requests|slow down", re.I
)
_MODEL_MISSING = re.compile(
    r"model.{0,120}?(?:not (?:be )?found|does not exist|doesn't exist|not available|not supported|no access"
    r"|not have access)|(?:unknown|invalid|unsupported) model|model_not_found",
    re.I | re.S,
)
_KEY_WORDS = re.compile(r"api[ _-]?key|authenticat|unauthori[sz]ed|credentials", re.I)


# Made at import like every module's logger: structlog's loggers are lazy and pick up the
# configuration in force when they first log (see app/logs.py).
log = get_logger("llm")


class LLMConfigError(ExpectedFailure):
    """The LLM cannot be used at all: bad key, unknown model, unreachable server, no credits.

    The message is one line, safe to print (no secret), and says which setting to fix.
    """


class _Stopped(Exception):
    """LLM calls were stopped earlier in this run (quota or key); no request was sent."""


class _Failure(Exception):
    """One request that did not produce a usable reply, and what to do about it.

    ``unreachable``: nothing answered at the address (connection refused, unknown host),
    which at start means a wrong ``XAI_BASE_URL`` rather than a busy server."""

    def __init__(self, kind: str, detail: str, status: int | None = None, retry_after: float | None = None,
                 unreachable: bool = False):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.unreachable = unreachable


# --- the retry policy, as plain functions ----------------------------------------------


def retry_wait(attempt: int, hint_s: float | None, *, base_s: float, cap_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    With a server hint (``Retry-After``) the wait is the hint plus up to ``base_s`` of
    jitter, so that many requests told "retry in 2 s" do not all return at the same
    instant. Without one it is exponential backoff with jitter: a random wait between
    half and all of ``min(cap_s, base_s * 2 ** (attempt - 1))``.
    """
    if hint_s is not None:
        return hint_s + random.uniform(0.0, base_s)
    ceiling = min(cap_s, base_s * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(headers: Mapping[str, str], cap_s: float) -> float | None:
    """The wait a server asks for, in seconds, or None when it asks for none.

    Reads ``retry-after-ms`` (milliseconds, sent by OpenAI-style servers; preferred as
    the finer of the two) and ``Retry-After`` (seconds, or an HTTP date). The result is
    clamped to ``[0, cap_s]`` so a confused server cannot stall the run for hours.
    """
    lowered = {str(key).lower(): value for key, value in headers.items()}
    seconds = _finite_number(lowered.get("retry-after-ms"))
    if seconds is not None:
        seconds /= 1000.0
    else:
        raw = lowered.get("retry-after")
        if raw is None:
            return None
        seconds = _finite_number(raw)
        if seconds is None:
            seconds = _seconds_until_http_date(raw)
        if seconds is None:
            return None
    return min(max(seconds, 0.0), cap_s)


def _finite_number(raw: str | None) -> float | None:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _seconds_until_http_date(raw: str) -> float | None:
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - datetime.now(timezone.utc)).total_seconds()


def is_quota_exhausted(status: int, text: str) -> bool:
    """Whether an error reply means the account's credits or quota are used up.

    402 (Payment Required) always does. A 429 or 403 does when its body speaks of quota,
    credits, billing or a spending limit, and not of a per-minute rate limit (some
    servers say "quota" for those, and those pass with time, so they are retried).
    """
    if status == 402:
        return True
    if status not in (403, 429):
        return False
    return bool(_QUOTA_WORDS.search(text)) and not _RATE_LIMIT_WORDS.search(text)


def failure_kind(status: int, text: str) -> str:
    """What an HTTP error reply means for the client: one of the kinds above."""
    if is_quota_exhausted(status, text):
        return QUOTA
    if status in (401, 403):
        return AUTH
    if status in (400, 404) and _MODEL_MISSING.search(text):
        return MODEL
    if status == 400 and _KEY_WORDS.search(text):  # xAI answers a wrong key with 400
        return AUTH
    if status in RETRYABLE_STATUSES:
        return RETRY
    return REJECTED


def error_message(text: str, limit: int = 300) -> str:
    """The human part of an error body (OpenAI's ``error.message``, xAI's ``error``), one line."""
    message = text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            error = error.get("message")
        message = str(error or body.get("message") or text)
    message = " ".join(message.split()) or "(empty body)"
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --- the namer --------------------------------------------------------------------------


class LLMNamer:
    """Names topics and themes with an OpenAI-compatible chat-completions server.

    Takes the process ``Settings`` (key, base URL, model, timeout, attempts) and the
    run's semaphore (``None``: a new one of ``LLM_CONCURRENCY``). ``backoff_base_s`` and
    ``backoff_cap_s`` shape the exponential backoff; ``max_retry_after_s`` caps a
    server's ``Retry-After``. Use as ``async with LLMNamer(settings) as namer:`` (it owns
    one HTTP session for the run), call ``check()`` once, then name.
    """

    def __init__(self, settings: Settings, semaphore: asyncio.Semaphore | None = None, *, backoff_base_s: float = 1.0,
                 backoff_cap_s: float = 30.0, max_retry_after_s: float = 300.0) -> None:
        if not settings.llm_wanted:
            raise ValueError("LLMNamer needs XAI_API_KEY (or a local XAI_BASE_URL); use make_namer to fall back"
                             " to offline naming")
        self._settings = settings
        self._url = settings.xai_base_url.rstrip("/") + "/chat/completions"
        self._semaphore = semaphore or asyncio.Semaphore(settings.llm_concurrency)
        self.concurrency = settings.llm_concurrency
        self._max_attempts = max(1, settings.llm_max_attempts)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._max_retry_after_s = max_retry_after_s
        self._session: aiohttp.ClientSession | None = None
        self._stopped_reason: str | None = None
        self._quota_exhausted = False
        self._in_flight = 0
        # What this server accepts, learnt from its refusals and kept for the run.
        self._token_parameter = "max_completion_tokens"
        self._json_format = True
        self._started_busy = False
        self._exchanges: ExchangeLog | None = None
        self._run_slots: LLMSlots | None = None  # the run-wide limit, when there is one
        self.recorded_usage: dict = {}  # app.naming.usage_since_recorded; shared with bound copies
        self._counts = dict.fromkeys(
            ("requests", "retries", "failures", "fallbacks", "prompt_tokens", "completion_tokens", "total_tokens",
             "peak_in_flight", "topics_named", "themes_named", "cache_hits"),
            0,
        )

    def __repr__(self) -> str:
        return f"LLMNamer(model={self._settings.xai_model!r}, base_url={self._clean(self._settings.xai_base_url)!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> "LLMNamer":
        timeout_s = self._settings.llm_timeout_s
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S)),
            # No key, no header: a local server takes none.
            headers={"Authorization": f"Bearer {self._settings.xai_api_key}"} if self._settings.xai_api_key else {},
            # The semaphore limits concurrency; a second limit here would only queue
            # requests inside the timeout.
            connector=aiohttp.TCPConnector(limit=0),
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- the public surface ------------------------------------------------------------

    async def check(self) -> None:
        """Prove the key, the model and the server work, before any expensive work starts.

        Sends one tiny completion (a limit of ``CHECK_MAX_TOKENS`` tokens). A refused key,
        an unknown model, an exhausted quota or an address where nothing answers raises
        ``LLMConfigError`` with one line naming the setting to fix. A busy server (429,
        5xx, a timeout, an unusable reply) is retried with the usual backoff, honouring
        ``Retry-After``, each wait logged, for up to ``LLM_START_BUDGET_S``; when that runs
        out the check returns anyway (the run starts, ``usage()`` says so). Returns None.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.llm_start_budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._post(prompts.check_messages(), CHECK_MAX_TOKENS, json_reply=False,
                                 subject="start-up check")
            except _Stopped:
                raise LLMConfigError(f"LLM calls were stopped earlier in this run: {self._stopped_reason}") from None
            except _Failure as failure:
                problem = failure
            else:
                log.info("llm_ready", model=self._settings.xai_model, base_url=self._clean(self._settings.xai_base_url))
                return
            if problem.kind != RETRY or problem.unreachable:
                raise LLMConfigError(self._config_message(problem)) from None
            wait_s = retry_wait(attempt, problem.retry_after, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s)
            if loop.time() + wait_s > deadline:
                self._started_busy = True
                log.warning("llm_busy_at_start", attempts=attempt, reason=problem.detail,
                            budget_s=self._settings.llm_start_budget_s,
                            consequence="starting anyway: each topic retries, then falls back to its keywords")
                return
            await self._wait_before_retry(attempt, problem, "start-up check", wait_s=wait_s)

    @asynccontextmanager
    async def for_run(self, pool, run_id: int) -> AsyncIterator["LLMNamer"]:
        """This namer bound to run ``run_id``, for as long as the ``async with`` block: it
        keeps every answered request in ``llm_exchanges`` under the run and answers a
        request kept before from there (unless ``LLM_CACHE=off``); with
        ``LLM_RUN_CONCURRENCY`` set, it sends a request only while holding one of the run's
        slots (``LLMSlots``), on top of this worker's own ``LLM_CONCURRENCY``.

        The bound namer is a copy that shares this one's HTTP session, concurrency and
        counts; this one stays unbound, so one checked namer can serve runs one after another.
        """
        window_s = self._settings.db_retry_window_s
        bound = copy.copy(self)
        bound._exchanges = ExchangeLog(pool, run_id, use_cache=self._settings.llm_cache, window_s=window_s)
        limit = self._settings.llm_run_concurrency
        bound._run_slots = LLMSlots(pool, run_id, limit, window_s=window_s) if limit else None
        try:
            yield bound
        finally:
            if bound._run_slots is not None:  # its connection goes back to the pool, its slots with it
                await bound._run_slots.__aexit__(None, None, None)

    async def name_topic(self, topic: TopicToName) -> Label:
        """Name one firm topic; never raises for this topic's trouble.

        Returns the LLM's label (``source="llm"``), or the offline keyword label
        (``source="keywords"``) when every attempt failed or LLM calls were stopped.
        """
        self._counts["topics_named"] += 1
        return await self._name(prompts.topic_messages(topic), fallback=topic_label_from_keywords(topic),
                                subject=f"topic {topic.firm_id}#{topic.topic_no}")

    async def name_theme(self, theme: ThemeToName) -> Label:
        """Name one cross-firm theme; never raises for this theme's trouble (see ``name_topic``)."""
        self._counts["themes_named"] += 1
        return await self._name(prompts.theme_messages(theme), fallback=theme_label_from_keywords(theme),
                                subject=f"theme {theme.theme_no}")

    def usage(self) -> dict:
        """Counts for ``runs.llm_usage`` and the end-of-run summary (JSON-ready, no secrets).

        ``requests``: HTTP requests sent (the check included); ``retries``: waits before
        another attempt; ``failures``: topics/themes whose attempts all failed;
        ``fallbacks``: topics/themes that got the keyword label (failures plus those
        skipped after LLM calls stopped); tokens as the server reported them;
        ``quota_exhausted``; ``stopped_reason`` (why LLM calls stopped, or None);
        ``peak_in_flight``: most requests on the wire at once; ``started_while_busy``: the
        start-up check ran out of its budget on a busy server; ``token_parameter`` and
        ``response_format``: what the server was found to accept; ``cache_hits``: names
        answered from the exchanges kept in the database, with no request; ``cache``: on or
        off.
        """
        return {
            "namer": "llm",
            "model": self._settings.xai_model,
            **self._counts,
            "quota_exhausted": self._quota_exhausted,
            "stopped_reason": self._stopped_reason,
            "started_while_busy": self._started_busy,
            "cache": "on" if self._settings.llm_cache else "off",
            "token_parameter": self._token_parameter,
            "response_format": self._json_format,
        }

    # --- one topic or theme, with retries ----------------------------------------------

    async def _name(self, messages: list[dict], fallback: Label, subject: str) -> Label:
        """The LLM's label for one prompt, or ``fallback`` once it cannot be had. A prompt
        answered usably before (this run or another) is answered from the exchange log."""
        key = request_key(self._payload(messages, prompts.MAX_REPLY_TOKENS, json_reply=True))
        cached = await self._exchanges.cached(key) if self._exchanges is not None else None
        if cached is not None:
            try:
                label = prompts.parse_label(prompts.reply_content(json.loads(cached)))
            except (ValueError, prompts.ReplyError):
                pass  # kept as usable by an older parser: ask again
            else:
                self._counts["cache_hits"] += 1
                log.debug("llm_cache_hit", subject=subject)
                return dataclasses.replace(label, request_key=key)
        problem: _Failure | None = None
        attempt = 0
        for attempt in range(1, self._max_attempts + 1):
            try:
                label = await self._post(messages, prompts.MAX_REPLY_TOKENS, subject=subject,
                                         read=lambda body: prompts.parse_label(prompts.reply_content(body)))
            except _Stopped:
                break
            except _Failure as failure:
                problem = failure
            except prompts.ReplyError as error:
                problem = _Failure(RETRY, f"unusable reply: {error}")
            except Exception as error:  # a surprise must cost one label, not the run
                problem = _Failure(REJECTED, f"unexpected {type(error).__name__}: {self._clean(str(error))}")
            else:
                log.debug("llm_named", subject=subject, attempt=attempt)
                return dataclasses.replace(label, request_key=key)
            if problem.kind != RETRY or attempt == self._max_attempts:
                break
            await self._wait_before_retry(attempt, problem, subject)
        if problem is not None:
            self._counts["failures"] += 1
            if problem.kind not in (QUOTA, AUTH):  # those were logged loudly once already
                log.warning("llm_naming_failed", subject=subject, attempts=attempt, reason=problem.detail)
        self._counts["fallbacks"] += 1
        return fallback

    async def _wait_before_retry(self, attempt: int, problem: _Failure, subject: str,
                                 wait_s: float | None = None) -> None:
        if wait_s is None:
            wait_s = retry_wait(attempt, problem.retry_after, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s)
        self._counts["retries"] += 1
        log.warning(
            "llm_retry",
            subject=subject,
            attempt=attempt,
            status=problem.status,
            reason=problem.detail,
            wait_s=round(wait_s, 3),
        )
        await asyncio.sleep(wait_s)

    # --- one HTTP request --------------------------------------------------------------

    def _payload(self, messages: list[dict], max_tokens: int, *, json_reply: bool) -> dict:
        """The request body, as this server accepts it (see ``_learn_from_refusal``)."""
        payload = {
            "model": self._settings.xai_model,
            "messages": messages,
            # The most likely answer, not a creative one: reruns should agree.
            "temperature": 0,
            self._token_parameter: max_tokens,
        }
        if json_reply and self._json_format:
            payload["response_format"] = {"type": "json_object"}
        return payload

    async def _post(self, messages: list[dict], max_tokens: int, *, json_reply: bool = True,
                    subject: str | None = None, read=lambda body: body):
        """Send one chat-completion request under the semaphore; returns ``read`` of the
        reply's JSON (the body itself by default; ``read`` raising ``ReplyError`` marks the
        answer unusable in the exchange log, and the error is raised).

        ``json_reply`` asks for a JSON object with ``response_format`` (while the server
        accepts it). A 400 that refuses ``max_completion_tokens`` or ``response_format``
        by name is answered by sending the request again without it, at once, and
        remembering that for the run. Raises ``_Stopped`` when LLM calls were stopped
        before this request could go out, and ``_Failure`` for anything but a JSON reply
        with status 2xx.
        """
        if self._session is None:
            raise RuntimeError("use LLMNamer as an async context manager: async with LLMNamer(settings) as namer")
        while True:
            payload = self._payload(messages, max_tokens, json_reply=json_reply)
            try:
                return await self._post_once(payload, subject, read)
            except _Failure as failure:
                if not self._learn_from_refusal(failure, payload):
                    raise

    def _learn_from_refusal(self, failure: _Failure, payload: dict) -> bool:
        """Whether ``failure`` is a 400 refusing a parameter this client can do without;
        if so, that parameter is changed for the rest of the run (logged once)."""
        if failure.status != 400:
            return False
        if "max_completion_tokens" in payload and "max_completion_tokens" in failure.detail:
            if self._token_parameter == "max_completion_tokens":
                self._token_parameter = "max_tokens"
                log.warning("llm_parameter_refused", parameter="max_completion_tokens", instead="max_tokens",
                            reason=failure.detail)
            return True
        if "response_format" in payload and "response_format" in failure.detail:
            if self._json_format:
                self._json_format = False
                log.warning("llm_parameter_refused", parameter="response_format",
                            instead="JSON asked for in the prompt only", reason=failure.detail)
            return True
        return False

    async def _post_once(self, payload: dict, subject: str | None, read):
        """One HTTP request of ``payload`` under the semaphore, kept in the exchange log
        (see ``_post``)."""
        async with self._semaphore, self._run_slots.slot() if self._run_slots else nullcontext():
            # Checked again after the wait for the semaphore: the quota may have run out
            # while this request was queued.
            if self._stopped_reason is not None:
                raise _Stopped()
            self._counts["requests"] += 1
            self._in_flight += 1
            self._counts["peak_in_flight"] = max(self._counts["peak_in_flight"], self._in_flight)
            started = time.monotonic()
            try:
                status, headers, text = await self._send(payload)
            finally:
                self._in_flight -= 1
            latency_s = time.monotonic() - started
            if 200 <= status < 300:
                body, result, usable = None, None, False
                try:
                    body = self._completion_body(text)
                    result = read(body)
                    usable = True
                finally:
                    await self._keep(payload, subject, status, text, usable, latency_s, body)
                return result
            failure = _Failure(failure_kind(status, text), f"HTTP {status}: {self._clean(error_message(text))}",
                               status=status, retry_after=retry_after_seconds(headers, self._max_retry_after_s))
            await self._keep(payload, subject, status, text, False, latency_s, None)
            if failure.kind in (QUOTA, AUTH):
                # Decided while still holding the semaphore, so no queued request slips out.
                self._stop(failure)
            raise failure

    async def _keep(self, payload, subject, status, text, usable, latency_s, body) -> None:
        """Record one answered request in the exchange log, when the run keeps one. The
        reply is redacted like everything else a server sends back (an error body may
        quote the key)."""
        if self._exchanges is None:
            return
        await self._exchanges.record(key=request_key(payload), payload=payload, status=status,
                                     reply=self._clean(text), usable=usable, latency_s=latency_s,
                                     subject=subject, usage=(body or {}).get("usage"))

    async def _send(self, payload: dict) -> tuple[int, Mapping[str, str], str]:
        """POST the payload; returns status, headers and body text. Network trouble, and a
        body over ``MAX_REPLY_BYTES`` (read a chunk at a time, and the connection closed at
        the cap rather than read to its end), are a retryable ``_Failure``."""
        assert self._session is not None
        try:
            async with self._session.post(self._url, json=payload) as response:
                raw = bytearray()
                async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
                    raw += chunk
                    if len(raw) > MAX_REPLY_BYTES:
                        response.close()
                        raise _Failure(RETRY, f"a reply of more than {MAX_REPLY_BYTES:,} bytes, not read further",
                                       status=response.status)
                return response.status, response.headers, raw.decode("utf-8", errors="replace")
        except asyncio.TimeoutError:
            raise _Failure(RETRY, f"no reply within {self._settings.llm_timeout_s:g} s") from None
        except aiohttp.ClientConnectorError as error:  # refused, unknown host: nothing there
            raise _Failure(RETRY, f"{type(error).__name__}: {self._clean(str(error))}", unreachable=True) from None
        except aiohttp.ClientError as error:
            raise _Failure(RETRY, f"{type(error).__name__}: {self._clean(str(error))}") from None

    def _completion_body(self, text: str) -> dict:
        """The reply's JSON, with its token usage counted. A body that is not JSON is retryable."""
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _Failure(RETRY, "a 2xx reply whose body is not a JSON object", status=200)
        self._count_tokens(body.get("usage"))
        return body

    def _count_tokens(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        prompt = _whole(usage.get("prompt_tokens"))
        completion = _whole(usage.get("completion_tokens"))
        self._counts["prompt_tokens"] += prompt
        self._counts["completion_tokens"] += completion
        self._counts["total_tokens"] += _whole(usage.get("total_tokens")) or prompt + completion

    # --- stopping and messages ---------------------------------------------------------

    def _stop(self, failure: _Failure) -> None:
        """Stop LLM calls for the rest of the run, logging why once."""
        if self._stopped_reason is not None:
            return
        if failure.kind == QUOTA:
            self._quota_exhausted = True
            self._stopped_reason = f"quota or credits exhausted ({failure.detail})"
            event = "llm_quota_exhausted"
        else:
            self._stopped_reason = f"API key rejected ({failure.detail})"
            event = "llm_key_rejected"
        log.error(event, reason=failure.detail,
                  consequence="no more LLM requests this run; remaining topics and themes are named from keywords")

    def _config_message(self, failure: _Failure) -> str:
        """One clear, secret-free line for ``LLMConfigError``."""
        model = self._settings.xai_model
        base_url = self._clean(self._settings.xai_base_url)
        if failure.kind == QUOTA:
            text = (f"the LLM account has no credits or quota left ({failure.detail}); add credits, "
                    "or unset XAI_API_KEY to name topics from keywords")
        elif failure.kind == AUTH:
            text = f"the LLM server at {base_url} rejected the API key in XAI_API_KEY ({failure.detail})"
        elif failure.kind == MODEL:
            text = f"the model {model!r} is unknown at {base_url} or this key cannot use it ({failure.detail}); check XAI_MODEL"
        elif failure.unreachable:
            text = f"nothing answers at the LLM server address {base_url} ({failure.detail}); check XAI_BASE_URL"
        else:
            text = (f"the LLM server at {base_url} refused a test request for model {model!r} "
                    f"({failure.detail}); check XAI_BASE_URL and XAI_MODEL")
        return self._clean(text)

    def _clean(self, text: str) -> str:
        """``text`` with every secret masked: for anything that may reach a log or an error."""
        return redact(text, self._settings.secrets())


def _whole(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@asynccontextmanager
async def make_namer(
    settings: Settings, semaphore: asyncio.Semaphore | None = None, *, check: bool = True
) -> AsyncIterator[Namer]:
    """The namer for this run, ready to use: ``async with make_namer(settings) as namer:``.

    With ``XAI_API_KEY`` set, or ``XAI_BASE_URL`` on this machine or a private network,
    an ``LLMNamer`` whose HTTP session lives as long as the ``async with`` block, checked
    at entry (``check=True``) so a bad key or model raises ``LLMConfigError`` before any
    expensive work. Otherwise an ``OfflineNamer`` (names from keywords), with one log
    line saying so.
    """
    if not settings.llm_wanted:
        log.info("llm_off", reason="XAI_API_KEY is not set; topics and themes are named from keywords")
        yield OfflineNamer()
        return
    async with LLMNamer(settings, semaphore) as namer:
        if check:
            await namer.check()
        yield namer
