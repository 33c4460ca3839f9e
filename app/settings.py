"""Settings: everything the program reads from its environment, in one place.

Two kinds of settings are kept apart on purpose:

* ``Settings`` says *where* things are (database, LLM server, model) and how the process
  behaves (concurrency, logging). Changing these does not change results.
* ``RunSettings`` holds the parameters that *do* change results (model, UMAP/HDBSCAN
  parameters, seed, smallest and largest firm clustered whole). They are recorded in the ``runs`` table, and
  resuming a run with different ones is refused, so a published result is traceable to
  exactly the settings that produced it.

Secrets (the API key, the database password) never leave this module in clear text:
``Settings.__repr__`` and ``redact`` mask them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from app.errors import UsageError

DEFAULT_XAI_BASE_URL = "https://api.x.ai/v1"
DEFAULT_XAI_MODEL = "grok-4-fast-non-reasoning"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# What runs the embedding model: torch (fp16 on a GPU), or on the CPU the same weights
# exported to ONNX and run by ONNX Runtime (fp32 or int8 quantized) or by OpenVINO
# (app/exported_model.py; docs/benchmarks.md, "Embedding backends on a CPU"). The
# setting may also be ``auto``: the machine's choice (app.embedding.resolve_backend).
EMBED_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
# The precision torch runs the model in: ``auto`` is fp16 on a GPU, bfloat16 on a CPU with
# bfloat16 instructions (AVX512_BF16 or AMX), fp32 elsewhere (app.embedding.choose_precision).
EMBEDDING_PRECISIONS = ("auto", "fp32")


class SettingsError(UsageError, ValueError):
    """A setting has a value the program cannot use (a usage error: exit code 2)."""


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when ``DATABASE_URL`` is unset.

    As root, the embedded server runs as an unprivileged OS user and opens every parent
    folder of its data folder to others, so the folder must not live under ``/root`` or a
    home directory: root gets ``/var/lib/firmtopics``. Anyone else gets a folder under
    ``$XDG_DATA_HOME`` (``~/.local/share`` by default).
    """
    if os.geteuid() == 0:
        return Path("/var/lib/firmtopics")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "firmtopics"


@dataclass(frozen=True)
class RunSettings:
    """The parameters that change a run's results; recorded in ``runs.settings``.

    Defaults suit firms of a few hundred to a few thousand sentences (one earnings call
    has about 125 kept sentences; a firm has a few calls).
    """

    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    # Another backend gives slightly other vectors (cosine to torch's about 0.99 for
    # onnx-int8), so other topics: a recorded setting. ``auto``, the default, is the
    # backend a run already recorded, else the fastest measured on this kind of machine
    # (app.embedding.resolve_backend: torch on a GPU or a bfloat16 CPU, onnx on other
    # CPUs); a run records the backend that ran (``ran_by``), never ``auto``. torch is
    # what runs recorded before the setting existed used.
    embed_backend: str = "auto"
    seed: int = 42
    # Firms with fewer sentences than this are recorded as skipped: too few to cluster.
    min_firm_sentences: int = 30
    # A firm with more sentences than this is clustered on a seeded sample of this many;
    # the rest join their nearest topic when close enough (outlier_threshold) or stay
    # unassigned. UMAP's and HDBSCAN's memory grows with the sentences clustered, so
    # without a cap one giant firm could exceed the machine's memory, and, taken first
    # again on every restart (firms go largest first), never let the run finish. 200,000
    # sentences (the largest ECTSum firm has under 2,000) cluster in 2.5 GB on the CPU, a
    # firm of 1,000,000 sampled so in 3.7 GB (docs/benchmarks.md, section 12): comfortable
    # on a 16 GB machine.
    max_firm_sentences: int = 200_000
    umap_n_neighbors: int = 15
    umap_n_components: int = 5
    umap_min_dist: float = 0.0
    # UMAP's layout epochs. None leaves it to UMAP: 500 below 10,000 points, 200 above.
    # 200 everywhere clusters a firm of a few thousand sentences about twice as fast on a
    # CPU, with topics that move as under another seed (docs/benchmarks.md, section 6).
    # None is also what runs recorded before this setting existed are compared with.
    umap_n_epochs: int | None = None
    # A firm's topics: HDBSCAN's leaf clusters (the finest stable clusters), each at least
    # max(hdbscan_min_cluster_size, min_topic_share x the firm's sentences) sentences, so a
    # firm of any size gets about a dozen to thirty topics and no catch-all. Excess of
    # mass, HDBSCAN's default selection, made one topic of more than half of a firm's
    # sentences in half of the firms measured (docs/quality.md explains the choice).
    hdbscan_min_cluster_size: int = 8
    min_topic_share: float = 0.033
    hdbscan_min_samples: int | None = 3
    cluster_selection: str = "leaf"
    # A firm of fewer than 60 sentences is clustered like the others (UMAP, then HDBSCAN),
    # and two of its clusters whose centres are at least this similar (cosine) are one
    # subject (app.clustering.SmallClusters; docs/quality.md, "Small firms"). None: the
    # earlier way, HDBSCAN on the raw embeddings, which finds nothing in most such firms.
    small_firm_merge_similarity: float | None = 0.75
    # A sentence HDBSCAN left out joins the topic whose centre is nearest when its cosine
    # similarity to that centre is at least this (marked 'nearest'); above 1, none does.
    outlier_threshold: float = 0.4
    # A sentence in no topic of its firm joins the nearest fine theme (by the centre of
    # the theme's sentences) when its cosine similarity to it is at least this (marked
    # 'nearest'): a firm mentions something too rarely for a topic of its own that other
    # firms talk about. Above 1, none does (docs/quality.md, "Sentences in no topic").
    theme_outlier_threshold: float = 0.3
    # How many cross-firm themes: None gives the square root of the number of topics
    # (about as many themes as topics a theme), so the granularity follows the corpus.
    theme_count: int | None = None
    # Broader themes are formed above the fine ones until a level has at most this many.
    theme_top_level_size: int = 20
    top_n_keywords: int = 10
    # How keywords are made (app/keywords.py, docs/quality.md): terms of up to this many
    # words ("supply chain"); BERTopic's reduce_frequent_words, which weighs down words
    # frequent in every cluster; and the words of the firms' names and ids left out (at
    # theme level also the words only one firm uses).
    keyword_ngrams: int = 2
    reduce_frequent_words: bool = False
    leave_out_firm_words: bool = True

    def as_dict(self) -> dict:
        """Plain dict, JSON-ready, for the ``runs`` table and comparisons."""
        return dataclasses.asdict(self)

    def ran_by(self, backend: str) -> "RunSettings":
        """These settings as a run records them: ``embed_backend`` ``auto`` replaced by
        ``backend``, the one that embeds."""
        return self if self.embed_backend != "auto" else dataclasses.replace(self, embed_backend=backend)

    def differences(self, recorded: Mapping) -> dict[str, tuple]:
        """Settings that differ from ``recorded`` (a ``runs.settings`` value).

        Returns ``{name: (recorded, now)}``; empty when they match. A setting the run
        predates (missing from ``recorded``) counts as its default, or, where the default
        changed what runs do, as what they did before it (``BEFORE_RECORDED``): such a run
        resumes as it started, or is told what differs.
        """
        now, defaults = self.as_dict(), {**type(self)().as_dict(), **BEFORE_RECORDED}
        recorded = {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded}
        keys = set(now) | set(recorded)
        return {
            k: (recorded.get(k), now.get(k))
            for k in sorted(keys)
            if recorded.get(k) != now.get(k)
        }


# What runs recorded before a setting existed did, where its default does otherwise.
BEFORE_RECORDED = {"embed_backend": "torch", "keyword_ngrams": 1, "leave_out_firm_words": False, "small_firm_merge_similarity": None}


def recorded_embed_backend(recorded: Mapping | None) -> str:
    """The embedding backend a run's recorded settings (a ``runs.settings`` value) name;
    torch for a run recorded before the setting existed."""
    return (recorded or {}).get("embed_backend", BEFORE_RECORDED["embed_backend"])

# The environment variable of each result-changing setting, how it is read (a whole
# number, with its minimum; a number; one of a few words) and, from the field's default
# in RunSettings, what it is when unset.
_RUN_ENV = {
    "embed_backend": ("FIRMTOPICS_EMBED_BACKEND", ("auto", *EMBED_BACKENDS)),
    "seed": ("FIRMTOPICS_SEED", int, 0),
    "min_firm_sentences": ("FIRMTOPICS_MIN_FIRM_SENTENCES", int),
    # A sample of fewer sentences than this would stand for a giant firm too poorly.
    "max_firm_sentences": ("FIRMTOPICS_MAX_FIRM_SENTENCES", int, 100),
    "umap_n_neighbors": ("FIRMTOPICS_UMAP_N_NEIGHBORS", int, 2),
    "umap_n_components": ("FIRMTOPICS_UMAP_N_COMPONENTS", int),
    "umap_min_dist": ("FIRMTOPICS_UMAP_MIN_DIST", float),
    "umap_n_epochs": ("FIRMTOPICS_UMAP_N_EPOCHS", int),
    "hdbscan_min_cluster_size": ("FIRMTOPICS_MIN_CLUSTER_SIZE", int, 2),
    "min_topic_share": ("FIRMTOPICS_MIN_TOPIC_SHARE", float),
    "hdbscan_min_samples": ("FIRMTOPICS_MIN_SAMPLES", int),
    "cluster_selection": ("FIRMTOPICS_CLUSTER_SELECTION", ("leaf", "eom")),
    "outlier_threshold": ("FIRMTOPICS_OUTLIER_THRESHOLD", float),
    "small_firm_merge_similarity": ("FIRMTOPICS_SMALL_FIRM_MERGE_SIMILARITY", float),
    "theme_outlier_threshold": ("FIRMTOPICS_THEME_OUTLIER_THRESHOLD", float),
    "theme_count": ("FIRMTOPICS_THEMES", int),
    "theme_top_level_size": ("FIRMTOPICS_THEME_TOP_LEVEL_SIZE", int, 2),
}
# The same for the settings of the process that are plain numbers (defaults: Settings').
_PROCESS_ENV = {
    "llm_concurrency": ("LLM_CONCURRENCY", int),
    "llm_run_concurrency": ("LLM_RUN_CONCURRENCY", int),
    "llm_timeout_s": ("LLM_TIMEOUT_S", float),
    "llm_max_attempts": ("LLM_MAX_ATTEMPTS", int),
    "llm_start_budget_s": ("LLM_START_BUDGET_S", float),
    "llm_price_prompt_per_m": ("LLM_PRICE_PROMPT_PER_M", float),
    "llm_price_completion_per_m": ("LLM_PRICE_COMPLETION_PER_M", float),
    "embedding_batch_size": ("EMBEDDING_BATCH_SIZE", int),
    "embedding_precision": ("EMBEDDING_PRECISION", EMBEDDING_PRECISIONS),
    "db_retry_window_s": ("DB_RETRY_WINDOW_S", float),
}


@dataclass(frozen=True)
class Settings:
    """Where things are and how the process behaves; built by ``from_env``."""

    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    xai_api_key: str | None = None
    xai_base_url: str = DEFAULT_XAI_BASE_URL
    xai_model: str = DEFAULT_XAI_MODEL
    llm_concurrency: int = 8
    # LLM requests in flight at most for the whole run, across every worker sharing it
    # (app.claims.LLMSlots); None: only each worker's own llm_concurrency applies.
    llm_run_concurrency: int | None = None
    llm_timeout_s: float = 60.0
    llm_max_attempts: int = 5
    # How long the start-up check waits out a busy server (429, 5xx, timeouts) before the
    # run starts anyway: long enough to ride out a busy minute of a shared key.
    llm_start_budget_s: float = 120.0
    # Answer a request from the exchanges kept in the database when the same request was
    # answered before (off: every request goes to the server, e.g. to sample again).
    llm_cache: bool = True
    # Prices per million prompt and completion tokens, for ``run --dry-run``'s cost.
    llm_price_prompt_per_m: float | None = None
    llm_price_completion_per_m: float | None = None
    log_format: str = "console"
    # Sentences per model call; None: app.embedding.DEFAULT_BATCH_SIZE of the device.
    embedding_batch_size: int | None = None
    # ``auto``: fp16 on a GPU, bfloat16 on a CPU that has bfloat16 instructions (1.7x fp32's
    # sentences/s on 2 CPUs, vectors at cosine 1.0000 to fp32's, topics that move no more
    # than under another seed: docs/benchmarks.md, "Embedding backends on a CPU"), else
    # fp32. ``fp32`` everywhere: the same vectors on every machine. The precision is part of
    # a worker's setup (``runs.setup``): a run is continued in the precision it began with.
    embedding_precision: str = "auto"
    # How long a lost database connection is retried before the run ends (resumably): long
    # enough to outlast a managed database's failover (RDS: one to two minutes), so a
    # failover does not end a run of many hours.
    db_retry_window_s: float = 120.0
    run: RunSettings = field(default_factory=RunSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from environment variables (``os.environ`` by default).

        Raises ``SettingsError`` with one clear sentence for a value that cannot be used.
        """
        env = os.environ if env is None else env

        def integer(name: str, default: int | None, minimum: int = 1) -> int | None:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
            if value < minimum:
                raise SettingsError(f"{name} must be at least {minimum}, got {value}")
            return value

        def number(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number, got {raw!r}") from None

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            value = env.get(name) or default
            if value not in allowed:
                raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
            return value

        log_format = env.get("LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
        if log_format not in ("console", "json"):
            raise SettingsError(f"LOG_FORMAT must be 'console' or 'json', got {log_format!r}")

        def read(variable: str, default, kind, minimum: int = 1):
            if kind is int:
                return integer(variable, default, minimum)
            if kind is float:
                return number(variable, default)
            return choice(variable, default, kind)

        run = RunSettings(
            embedding_model=env.get("EMBEDDING_MODEL") or DEFAULT_EMBEDDING_MODEL,
            **{name: read(variable, getattr(RunSettings, name), *how) for name, (variable, *how) in _RUN_ENV.items()},
        )
        if (integer("LLM_RUN_CONCURRENCY", None) or 0) > 1023:
            raise SettingsError(f"LLM_RUN_CONCURRENCY must be at most 1023, got {env['LLM_RUN_CONCURRENCY']}")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            data_dir=Path(env["FIRMTOPICS_DATA_DIR"]) if env.get("FIRMTOPICS_DATA_DIR") else default_data_dir(),
            xai_api_key=env.get("XAI_API_KEY") or None,
            xai_base_url=(env.get("XAI_BASE_URL") or DEFAULT_XAI_BASE_URL).rstrip("/"),
            xai_model=env.get("XAI_MODEL") or DEFAULT_XAI_MODEL,
            llm_cache=choice("LLM_CACHE", "on", ("on", "off")) == "on",
            log_format=log_format,
            **{name: read(variable, getattr(cls, name), *how) for name, (variable, *how) in _PROCESS_ENV.items()},
            run=run,
        )

    @property
    def llm_wanted(self) -> bool:
        """Whether topics are named by an LLM: with a key, or with ``XAI_BASE_URL`` on this
        machine or a private network (a local vLLM, Ollama or llama.cpp server needs no key)."""
        return bool(self.xai_api_key) or is_local_url(self.xai_base_url)

    def secrets(self) -> list[str]:
        """The secret strings this process knows (API key, database password)."""
        found = [self.xai_api_key] if self.xai_api_key else []
        return found + database_passwords(self.database_url)

    def __repr__(self) -> str:  # never print a secret, even in a debugger or a traceback
        return redact(
            # No URL at all: its host and user are no secret, but a form of its password
            # that no parser foresaw would be.
            f"Settings(database_url={'set' if self.database_url else 'unset'}, xai_base_url={self.xai_base_url!r}, "
            f"xai_model={self.xai_model!r}, xai_api_key={'set' if self.xai_api_key else 'unset'}, "
            f"llm_concurrency={self.llm_concurrency}, run={self.run!r})",
            self.secrets(),
        )


# A password in a URL within any text: after "scheme://user:" up to the last "@" before
# the host (a password may hold an "@"), and a "password=" query parameter.
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^\s/?#]*)(?P<tail>@)", re.I)
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s#]*)(?P<tail>)", re.I)


def is_local_url(url: str) -> bool:
    """Whether ``url``'s host is this machine or a private network address (``localhost``,
    127.0.0.0/8, ::1, 10/8, 172.16/12, 192.168/16, or a single-label name such as a compose
    service ``ollama``): a server there is the user's own, and needs no API key."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or ("." not in host and ":" not in host and host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def database_password(url: str | None) -> str | None:
    """The password of a ``postgresql://user:password@host/db`` URL, percent-decoded, from
    its user info or else its ``password=`` query parameter; None without one."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    return next((value for key, value in parse_qsl(parts.query) if key.lower() == "password" and value), None)


def database_passwords(url: str | None) -> list[str]:
    """Every form of the password in a database URL: as written (user info, then the
    ``password=`` query parameter), then percent-decoded, each once. Parsed with
    ``urllib.parse``, whose user info ends at the last "@", so a password holding one
    is found whole. Empty without a URL or a password."""
    if not url:
        return []
    parts = urlsplit(url)
    written = []
    if parts.password:
        written.append(parts.password)
    written += [value for key, value in parse_qsl(parts.query, keep_blank_values=True) if key.lower() == "password"]
    # parse_qsl decodes; the query's text as written is the other form.
    written += [m.group("password") for m in _PASSWORD_IN_QUERY.finditer("?" + parts.query)]
    forms = written + [unquote(w) for w in written]
    return [form for i, form in enumerate(forms) if form and form not in forms[:i]]


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with every known secret and any password inside a URL (user info or
    ``password=`` query parameter) replaced by ``***``.

    Used on every log line and error message, so a secret cannot leak through an
    exception that quotes a connection string or a request header. The longest secret
    goes first, so a secret inside another is not left half shown.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    for pattern in (_PASSWORD_IN_URL, _PASSWORD_IN_QUERY):
        text = pattern.sub(lambda m: m.group("head") + ("***" if m.group("password") else "") + m.group("tail"), text)
    return text
