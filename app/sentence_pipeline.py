"""A sentence-transformers model's steps around its transformer, without torch.

An exported model (``app.exported_model``) runs only the transformer: texts in as token
ids, token vectors out. What comes before and after is read here from the model's folder
and done with the ``tokenizers`` package and numpy, as sentence-transformers does it:

* tokenizing with the folder's ``tokenizer.json``, lower-cased first when
  ``sentence_bert_config.json`` asks for it, cut at the model's ``max_seq_length``, each
  batch padded to its longest text;
* pooling the token vectors with the attention mask (mean, CLS or max, as
  ``1_Pooling/config.json`` says).

Nothing here imports torch, transformers or sentence-transformers, so a process that
only embeds a query (``firmtopics search``) starts in a fraction of a second rather than
the seconds those take. A folder whose model needs more (another module after the
pooling, a default prompt, no ``tokenizer.json``) is ``Unsupported``: its caller runs
those steps with sentence-transformers instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The module classes done here (modules.json names them by their import path, which
# moved between sentence-transformers versions; the class name stayed).
TRANSFORMER, POOLING, NORMALIZE = "Transformer", "Pooling", "Normalize"
# The pooling modes done here. 1_Pooling/config.json names them in ``pooling_mode`` (one or
# a list) or, as older versions wrote it, as ``pooling_mode_*`` flags, concatenated in
# this order; no mode at all means mean pooling.
DONE_MODES = ("cls", "max", "mean")
LEGACY_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


class Unsupported(ValueError):
    """The model's folder asks for a step this module does not do; the message says which."""


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _module_types(model_dir: Path) -> list[str]:
    """The sentence-transformers module types of the model, in order (a folder without
    ``modules.json`` is a plain transformer, which sentence-transformers mean-pools)."""
    modules = _json(model_dir / "modules.json")
    if not modules:
        return [TRANSFORMER, POOLING]
    return [m["type"].rsplit(".", 1)[-1] for m in modules]


def max_seq_length(model_dir: Path) -> int:
    """The most tokens a text keeps, as sentence-transformers finds it: the model's
    ``max_seq_length`` when its folder gives one, else the tokenizer's limit capped at
    the transformer's positions."""
    given = _json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    if given:
        return int(given)
    limits = [_json(model_dir / "tokenizer_config.json").get("model_max_length"),
              _json(model_dir / "config.json").get("max_position_embeddings")]
    limits = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < 1e9]
    if not limits:
        raise Unsupported(f"no sequence length limit in {model_dir}")
    return min(limits)


def _token_text(token) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _set_bert_normalizer(tokenizer, config: dict) -> None:
    """Set the lower-casing, accents and Chinese characters of a BERT normalizer as
    ``tokenizer_config.json`` (``config``) says, as transformers does when it loads one."""
    from tokenizers.normalizers import BertNormalizer

    normalizer = tokenizer.normalizer
    if isinstance(normalizer, BertNormalizer):  # its setters change the tokenizer's own
        for attribute, setting in (("lowercase", "do_lower_case"), ("strip_accents", "strip_accents"),
                                   ("handle_chinese_chars", "tokenize_chinese_chars")):
            if setting in config:
                setattr(normalizer, attribute, config[setting])


def load_tokenizer(model_dir: Path):
    """The model's tokenizer as a ``tokenizers.Tokenizer`` set up as sentence-transformers
    uses it: cut at ``max_seq_length``, a batch padded to its longest text, lower-cased
    first when the model's ``do_lower_case`` says so. Raises ``Unsupported`` without a
    ``tokenizer.json`` or a padding token."""
    from tokenizers import Tokenizer
    from tokenizers.normalizers import Lowercase, Sequence

    path = model_dir / "tokenizer.json"
    if not path.exists():
        raise Unsupported(f"no tokenizer.json in {model_dir}")
    tokenizer = Tokenizer.from_file(str(path))
    config = _json(model_dir / "tokenizer_config.json")
    _set_bert_normalizer(tokenizer, config)
    if _json(model_dir / "sentence_bert_config.json").get("do_lower_case"):
        normalizer = tokenizer.normalizer
        parts = list(normalizer) if isinstance(normalizer, Sequence) else [normalizer] if normalizer else []
        if not any(isinstance(n, Lowercase) for n in parts):
            tokenizer.normalizer = Sequence([Lowercase(), *parts])
    pad = _token_text(config.get("pad_token")) or (tokenizer.padding or {}).get("pad_token")
    pad_id = tokenizer.token_to_id(pad) if pad else None
    if pad_id is None:
        raise Unsupported(f"no padding token in {model_dir}")
    tokenizer.enable_truncation(max_length=max_seq_length(model_dir))
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad, direction=config.get("padding_side", "right"))
    return tokenizer


def tokenize_with(tokenizer) -> Callable[[list[str]], dict[str, np.ndarray]]:
    """A function from texts to the transformer's inputs (``input_ids``,
    ``attention_mask``, ``token_type_ids``: int64 arrays, one row a text)."""

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        encodings = tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}

    return tokenize


def _pool(token_vectors: np.ndarray, mask: np.ndarray, modes: list[str]) -> np.ndarray:
    """Sentence vectors from token vectors (batch, sequence, dimension) and the
    attention mask (batch, sequence): each mode's vector, concatenated."""
    token_vectors = token_vectors.astype(np.float32, copy=False)
    weights = mask.astype(np.float32)[:, :, None]
    out = []
    for mode in modes:
        if mode == "cls":  # the first unmasked token (the first one unless padded on the left)
            out.append(token_vectors[np.arange(len(mask)), mask.argmax(axis=1)])
        elif mode == "max":
            out.append(np.where(weights > 0, token_vectors, -np.inf).max(axis=1))
        else:
            out.append((token_vectors * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9))
    return np.concatenate(out, axis=1).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Pooling:
    """How token vectors become a sentence vector: the pooling ``modes``, the
    ``dimension`` of the result and whether the model normalises it (a Normalize module)."""

    modes: tuple[str, ...]
    dimension: int
    normalize: bool = False

    def __call__(self, token_vectors: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence vectors (batch, dimension), float32; L2-normalised with ``normalize``."""
        vectors = _pool(token_vectors, mask, list(self.modes))
        return normalized(vectors) if self.normalize else vectors


def normalized(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` (one a row) scaled to unit length; a zero row stays zero."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _pooling_modes(config: dict) -> tuple[str, ...]:
    """The pooling modes a ``1_Pooling/config.json`` names, in either way of writing them."""
    if "pooling_mode" in config:
        named = config["pooling_mode"]
        return (named,) if isinstance(named, str) else tuple(named)
    return tuple(mode for key, mode in LEGACY_MODES.items() if config.get(key)) or ("mean",)


def load_pooling(model_dir: Path) -> Pooling:
    """The model's pooling, from its ``modules.json`` and ``1_Pooling/config.json``.
    Raises ``Unsupported`` for a module after the pooling other than normalisation, a
    pooling mode not done here, or a default prompt (which would change the text)."""
    types = _module_types(model_dir)
    if types[:2] != [TRANSFORMER, POOLING] or any(t != NORMALIZE for t in types[2:]):
        raise Unsupported(f"modules {types} of {model_dir}: only a transformer, pooling and normalisation")
    if _json(model_dir / "config_sentence_transformers.json").get("default_prompt_name"):
        raise Unsupported(f"{model_dir} has a default prompt")
    modules = _json(model_dir / "modules.json")
    config = _json(model_dir / (modules[1]["path"] if modules else "1_Pooling") / "config.json")
    modes = _pooling_modes(config)
    if any(mode not in DONE_MODES for mode in modes):
        raise Unsupported(f"pooling {modes} of {model_dir}: only {', '.join(DONE_MODES)}")
    width = (config.get("embedding_dimension") or config.get("word_embedding_dimension")
             or _json(model_dir / "config.json").get("hidden_size"))
    if not width:
        raise Unsupported(f"no dimension for the pooling of {model_dir}")
    return Pooling(modes=modes, dimension=int(width) * len(modes), normalize=NORMALIZE in types[2:])


@dataclass(frozen=True)
class SentenceSteps:
    """What a model does around its transformer: ``tokenize`` (texts -> inputs) and
    ``pool`` (token vectors and attention mask -> sentence vectors)."""

    tokenize: Callable[[list[str]], dict[str, np.ndarray]]
    pool: Pooling


def load_steps(model_dir: Path) -> SentenceSteps:
    """The tokenizing and pooling of the sentence-transformers model in ``model_dir``.
    Raises ``Unsupported`` where they are not done here, ``ImportError`` without the
    ``tokenizers`` package."""
    pooling = load_pooling(model_dir)  # first: it reads a few small files, the tokenizer a large one
    return SentenceSteps(tokenize=tokenize_with(load_tokenizer(model_dir)), pool=pooling)
