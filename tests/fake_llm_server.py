"""A fake OpenAI-compatible chat-completions server, for tests and benchmarks.

It speaks real HTTP on 127.0.0.1 (a free port), so the client under test runs its real
code path: aiohttp session, headers, timeouts, status codes, retries.

What it does:

* ``POST /v1/chat/completions`` answers like xAI/OpenAI: a ``choices`` list whose message
  content is a JSON label, and a plausible ``usage`` block. The label echoes the first
  keyword of the prompt (``"LLM <keyword>"``), so a test can tell an LLM name from the
  offline keyword name.
* Rules that hold for every request: a wrong key gets 401 (or ``bad_key_status``), an
  unknown model gets 404 (or ``unknown_model_status``). Both bodies quote what was sent,
  as real servers sometimes do, which tests use to prove the client redacts secrets.
* A scripted queue of behaviours (``enqueue``): each chat request that passes the rules
  takes the next behaviour; an empty queue means "answer normally". Behaviours: a status
  with headers (429 with ``Retry-After``, 500, a quota-exhausted 429 ...), malformed
  content, code-fenced content, a hang past the client's timeout, an oversized body (a
  normal answer padded with spaces to a given size, streamed in chunks with no
  Content-Length; ``streamed`` records how many bytes of each went out before the client
  hung up).
* Like servers of other makers: ``require_key=False`` takes requests without a key (a
  local vLLM or Ollama); ``refuse_parameters`` answers 400 naming any of those request
  parameters when a request carries it (a newer OpenAI model refusing ``max_tokens``, a
  server without ``response_format``).
* Every request is recorded (path, headers, body), and so is the peak number of requests
  being handled at once; ``GET /stats`` returns the counts as JSON.

Run standalone for a benchmark; the first stdout line is the base URL, and on SIGTERM or
SIGINT it prints its counts as one JSON line on stderr::

    python tests/fake_llm_server.py --port 0 --latency 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

QUOTA_MESSAGE = (
    "Your team has either used all available credits or reached its monthly spending limit. "
    "To continue making API requests, please purchase more credits or raise your spending limit."
)


@dataclass
class Behaviour:
    """What the server does with one chat request.

    ``kind`` is ``ok`` (a normal answer), ``status`` (answer ``status`` with ``body`` and
    ``headers``), ``content`` (a 200 whose message content is ``content`` verbatim),
    ``hang`` (wait ``seconds`` before answering normally) or ``oversized`` (a normal
    answer padded with spaces to ``size`` bytes, which is still valid JSON, streamed).
    """

    kind: str = "ok"
    status: int = 200
    body: dict | str | None = None
    headers: dict = field(default_factory=dict)
    content: str | None = None
    seconds: float = 0.0
    size: int = 0


# Ready-made behaviours, so tests read as a list of what happens.
def ok() -> Behaviour:
    return Behaviour("ok")


def status(code: int, message: str = "error", headers: dict | None = None) -> Behaviour:
    return Behaviour("status", status=code, body={"error": {"message": message}}, headers=headers or {})


def rate_limited(retry_after: float | None = None, retry_after_ms: float | None = None) -> Behaviour:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return status(429, "Rate limit reached: too many requests per minute, please slow down.", headers)


def server_error(code: int = 500) -> Behaviour:
    return status(code, "internal server error")


def quota_exhausted(code: int = 429) -> Behaviour:
    # The shape xAI uses: {"code": ..., "error": "<message>"}.
    return Behaviour("status", status=code, body={"code": "Client specified an invalid argument", "error": QUOTA_MESSAGE})


def malformed() -> Behaviour:
    return Behaviour("content", content="Sure! A good name would be Revenue Growth, since it is about revenue.")


def fenced(name: str = "Fenced label", summary: str = "A label inside a code fence.") -> Behaviour:
    label = json.dumps({"name": name, "summary": summary})
    return Behaviour("content", content=f"Here you go:\n```json\n{label}\n```")


def content(text: str) -> Behaviour:
    return Behaviour("content", content=text)


def hang(seconds: float = 30.0) -> Behaviour:
    return Behaviour("hang", seconds=seconds)


def oversized(size: int) -> Behaviour:
    return Behaviour("oversized", size=size)


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    path: str
    headers: dict
    body: dict | None


_KEYWORDS_LINE = re.compile(r"^\s*keywords:\s*(.+)$", re.I | re.M)


def first_keyword(body: dict) -> str:
    """The first keyword named in the prompt (the ``Keywords:`` line), or ``"topic"``."""
    text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict))
    match = _KEYWORDS_LINE.search(text)
    if match:
        words = [w.strip() for w in match.group(1).split(",") if w.strip()]
        if words:
            return words[0]
    return "topic"


def fake_usage(body: dict, reply: str) -> dict:
    """A plausible ``usage`` block: about four characters a token."""
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []) if isinstance(m, dict))
    prompt_tokens = max(1, prompt_chars // 4)
    completion_tokens = max(1, len(reply) // 4)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class FakeLLMServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

    ``api_key``: the only key accepted (``None``: any non-empty key). ``models``: the
    models that exist (``None``: any). ``latency``: seconds every chat request takes.
    ``hold_until``: chat requests are held until that many are in flight at once, then all
    go on (``latency`` is then the most any waits): a test of concurrency that does not
    depend on how fast the machine starts requests.
    ``error_rate``: fraction of unscripted requests answered 503 (for soak benchmarks).
    ``record``: keep every request (tests); a long benchmark turns it off and keeps counts
    only. Use as ``async with FakeLLMServer(...) as server:``; ``server.base_url`` is
    what ``XAI_BASE_URL`` should be.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: tuple[str, ...] | None = None,
        latency: float = 0.0,
        hold_until: int | None = None,
        bad_key_status: int = 401,
        unknown_model_status: int = 404,
        error_rate: float = 0.0,
        seed: int = 0,
        port: int = 0,
        record: bool = True,
        require_key: bool = True,
        refuse_parameters: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        self.require_key = require_key
        self.refuse_parameters = tuple(refuse_parameters)
        self.models = models
        self.latency = latency
        self.hold_until = hold_until
        self._gathered = asyncio.Event()
        self.bad_key_status = bad_key_status
        self.unknown_model_status = unknown_model_status
        self.error_rate = error_rate
        self.port = port
        self.record = record
        self.request_count = 0
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.peak_concurrent = 0
        self.streamed: list[int] = []  # bytes of each oversized body sent before the client hung up
        self._script: deque[Behaviour] = deque()
        self._random = random.Random(seed)
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:PORT/v1``)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        # A short shutdown: a hanging handler must not hold up the end of a test.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self.base_url

    async def stop(self) -> None:
        """Stop serving; wakes any hanging handler first."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeLLMServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting and inspection ----------------------------------------------------

    def enqueue(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next chat requests, in order."""
        self._script.extend(behaviours)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- handlers --------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        names = self.models or ("fake-model",)
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in names]})

    def stats(self) -> dict:
        """Requests served and the peak number handled at once."""
        return {"requests": self.request_count, "peak_concurrent": self.peak_concurrent, "in_flight": self.in_flight}

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.peak_concurrent = max(self.peak_concurrent, self.in_flight)
        if self.hold_until is not None and self.in_flight >= self.hold_until:
            self._gathered.set()
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        self.request_count += 1
        if self.record:
            self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
        if self.hold_until is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._gathered.wait(), self.latency)
        elif self.latency:
            await self._sleep(self.latency)
        if not isinstance(body, dict):
            return web.json_response({"error": {"message": "request body is not JSON"}}, status=400)

        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if (self.require_key and not key) or (self.api_key is not None and key != self.api_key):
            # Quoting the key back is deliberately careless: the client must redact it.
            return web.json_response({"error": f"Incorrect API key provided: {key}."}, status=self.bad_key_status)
        model = body.get("model")
        if self.models is not None and model not in self.models:
            message = f"The model {model} does not exist or your team does not have access to it."
            return web.json_response(
                {"code": "Some requested entity was not found", "error": message}, status=self.unknown_model_status
            )

        for parameter in self.refuse_parameters:
            if parameter in body:  # worded as OpenAI does
                message = f"Unsupported parameter: '{parameter}' is not supported with this model."
                return web.json_response({"error": {"message": message, "param": parameter}}, status=400)

        behaviour = self._script.popleft() if self._script else self._unscripted()
        if behaviour.kind == "hang":
            await self._sleep(behaviour.seconds)
            behaviour = ok()
        if behaviour.kind == "status":
            text = behaviour.body if isinstance(behaviour.body, str) else json.dumps(behaviour.body or {})
            return web.Response(
                status=behaviour.status, text=text, headers=behaviour.headers, content_type="application/json"
            )
        if behaviour.kind == "content":
            return web.json_response(self._completion(body, behaviour.content or ""))
        keyword = first_keyword(body)
        label = {"name": f"LLM {keyword}", "summary": f"What the firm says about {keyword}."}
        if behaviour.kind == "oversized":
            return await self._stream_padded(request, self._completion(body, json.dumps(label)), behaviour.size)
        return web.json_response(self._completion(body, json.dumps(label)))

    async def _stream_padded(self, request: web.Request, answer: dict, size: int) -> web.StreamResponse:
        """``answer`` followed by spaces up to ``size`` bytes, written a chunk at a time
        (chunked encoding, no Content-Length), until the end or until the client hangs up."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        head, pad = json.dumps(answer).encode(), b" " * 65536
        sent = 0
        try:
            await response.write(head)
            sent = len(head)
            while sent < size:
                piece = pad[:size - sent]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
        except (ConnectionError, RuntimeError):  # the client closed the connection
            pass
        finally:
            self.streamed.append(sent)
        return response

    def _unscripted(self) -> Behaviour:
        if self.error_rate and self._random.random() < self.error_rate:
            return server_error(503)
        return ok()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the server is stopping."""
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    def _completion(self, body: dict, reply: str) -> dict:
        return {
            "id": f"chatcmpl-{self.request_count}",
            "object": "chat.completion",
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": fake_usage(body, reply),
        }


async def _serve(args: argparse.Namespace) -> None:
    server = FakeLLMServer(
        api_key=args.api_key,
        models=tuple(args.model) if args.model else None,
        latency=args.latency,
        error_rate=args.error_rate,
        seed=args.seed,
        port=args.port,
        record=False,
        require_key=not args.no_key,
        refuse_parameters=tuple(args.refuse_parameter or ()),
    )
    # The first answers say "busy", as when another job shares the key.
    server.enqueue(*[rate_limited(args.busy_retry_after) for _ in range(args.busy_first)])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(await server.start(), flush=True)
    try:
        await stop.wait()  # serve until told to stop
    finally:
        await server.stop()
        # The counts a benchmark wants, on stderr so stdout stays one line.
        print(json.dumps(server.stats()), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until killed, the base URL on the first stdout line."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible chat-completions server.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each chat request takes")
    parser.add_argument("--api-key", default=None, help="the only key accepted (default: any)")
    parser.add_argument("--model", action="append", help="a model that exists (repeatable; default: any)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 503")
    parser.add_argument("--seed", type=int, default=0, help="seed for --error-rate")
    parser.add_argument("--no-key", action="store_true", help="take requests without an API key, as a local server")
    parser.add_argument("--refuse-parameter", action="append", help="answer 400 to requests carrying it (repeatable)")
    parser.add_argument("--busy-first", type=int, default=0, help="answer the first N chat requests 429")
    parser.add_argument("--busy-retry-after", type=float, default=1.5, help="the Retry-After of those 429s")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
