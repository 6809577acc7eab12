"""spine.storage.minilm_onnx's protobuf writer, checked against the `onnx` package it replaced on
the start path: each piece encodes as onnx.helper / numpy_helper would, and the whole graph built
from the bundled weights is a valid model that onnx parses and writes back byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from spine.storage import minilm_onnx as mo

onnx = pytest.importorskip("onnx")
helper = pytest.importorskip("onnx.helper")
numpy_helper = pytest.importorskip("onnx.numpy_helper")


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63)])
def test_varint_ints_as_protobuf_writes_them(n: int) -> None:
    attr = helper.make_attribute("a", n)  # an int attribute: field 3, varint
    assert mo._pb_attribute("a", n) == attr.SerializeToString()


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asarray([-1, 0, 2**40], dtype=np.int64),
    np.asarray(3.5, dtype=np.float32),  # 0-d
])
def test_a_tensor_as_numpy_helper_writes_it(arr: np.ndarray) -> None:
    ours = b"".join(bytes(p) for p in mo._pb_tensor("w", arr))
    theirs = numpy_helper.from_array(np.ascontiguousarray(arr), "w").SerializeToString()
    assert onnx.TensorProto.FromString(ours) == onnx.TensorProto.FromString(theirs)
    assert np.array_equal(numpy_helper.to_array(onnx.TensorProto.FromString(ours)),
                          np.ascontiguousarray(arr))


def test_attributes_of_each_kind_as_helper_writes_them() -> None:
    tensor = numpy_helper.from_array(np.asarray([1.0], dtype=np.float32), "t").SerializeToString()
    for value, theirs in [(0.5, helper.make_attribute("x", 0.5)),
                          ([1, -2, 3], helper.make_attribute("x", [1, -2, 3])),
                          (7, helper.make_attribute("x", 7))]:
        assert mo._pb_attribute("x", value) == theirs.SerializeToString(), value
    parsed = onnx.AttributeProto.FromString(mo._pb_attribute("x", tensor))
    assert parsed.type == onnx.AttributeProto.TENSOR and parsed.t.name == "t"
    with pytest.raises(TypeError, match="attribute x"):
        mo._pb_attribute("x", "text")


def test_value_info_as_helper_writes_it() -> None:
    theirs = helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"])
    assert mo._pb_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"]) == \
        theirs.SerializeToString()
    theirs = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["batch", 384])
    assert mo._pb_value_info("out", onnx.TensorProto.FLOAT, ["batch", 384]) == \
        theirs.SerializeToString()


def test_the_graph_from_the_bundled_weights_is_a_valid_model() -> None:
    try:
        weights = mo._read_safetensors(mo.minilm_dir() / "model.safetensors")
    except Exception as e:  # the weights package is installed by `make`, not by every venv
        pytest.skip(f"MiniLM weights not installed: {e}")
    graph = mo._build_graph(weights)
    model = onnx.load_from_string(graph)
    onnx.checker.check_model(model)
    assert model.SerializeToString() == graph  # nothing the parser drops or reorders
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert len(model.graph.output) == 1
