#!/usr/bin/env python3
"""Writes tests/data/gguf/dequant.gguf (a tiny GGUF v3 file with one tensor per supported
type: F32, F16, BF16, Q8_0, Q4_0, Q4_1 quantized from random values; Q5_0, Q5_1, Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS as random bytes with finite scales; plus one IQ2_XXS the
runtime must refuse) and tests/data/gguf/dequant.json (each tensor's values as the Python `gguf` package's
gguf.quants.dequantize gives them; Q8_K, which the package cannot dequantize, as ggml's
dequantize_row_q8_K computes it: f32 d times each int8), for
tests/unit/runtime/gguf/dequantize_test.cc.

Run with gguf==0.10.0 (the version dequant.json records; a later one quantizes Q4_0 differently,
which would change the existing tensors):
  python3 -m venv /tmp/ggufvenv && /tmp/ggufvenv/bin/pip install gguf==0.10.0 numpy sentencepiece pyyaml
  /tmp/ggufvenv/bin/python tools/golden/make_gguf_test_data.py
"""
import json
import os

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "gguf")
ROWS, COLS = 2, 64  # ne = [64, 2]: two blocks of 32 per row

# Random-byte tensors: (name, type, ne, byte offsets of the f16 scale fields in a block, byte
# offset of an f32 scale). Every bit pattern of the quants and packed sub-block scales is
# valid; only d (and dmin / m) must be finite, so those are overwritten with sane values.
RAW = [
    ("q5_0", T.Q5_0, [128, 2], [0], None),
    ("q5_1", T.Q5_1, [128, 2], [0, 2], None),
    ("q2_k", T.Q2_K, [512, 2], [80, 82], None),
    ("q3_k", T.Q3_K, [512, 2], [108], None),
    ("q4_k", T.Q4_K, [512, 2], [0, 2], None),
    ("q5_k", T.Q5_K, [512, 2], [0, 2], None),
    ("q6_k", T.Q6_K, [512, 2], [208], None),
    ("q8_k", T.Q8_K, [512, 2], [], 0),
    ("iq4_nl", T.IQ4_NL, [128, 2], [0], None),
    ("iq4_xs", T.IQ4_XS, [512, 2], [0], None),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20260101)
    path = os.path.join(OUT, "dequant.gguf")
    w = gguf.GGUFWriter(path, arch="test")
    expected = {}
    for name, qtype in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0),
                        ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
        x = (rng.standard_normal((ROWS, COLS)) * 0.7).astype(np.float32)
        x[0, :4] = [0.0, -0.0, 1.0, -1.0]
        q = quantize(x, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        values = dequantize(q, qtype).astype(np.float32).reshape(-1)
        expected[name] = {"type": qtype.name, "ne": [COLS, ROWS],
                          "values": [float(v) for v in values]}
    raw_rng = np.random.default_rng(20260202)
    for name, qtype, ne, halves, f32_at in RAW:
        block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = ne[1], ne[0]
        blocks = raw_rng.integers(0, 256, size=(rows * cols // block_size, block_bytes),
                                  dtype=np.uint8)
        for at in halves:
            scale = (raw_rng.standard_normal(blocks.shape[0]) * 0.05).astype(np.float16)
            blocks[:, at:at + 2] = scale.view(np.uint8).reshape(-1, 2)
        if f32_at is not None:
            scale = (raw_rng.standard_normal(blocks.shape[0]) * 0.01).astype(np.float32)
            blocks[:, f32_at:f32_at + 4] = scale.view(np.uint8).reshape(-1, 4)
        q = blocks.reshape(rows, -1)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
        if qtype == T.Q8_K:
            values = _dequantize_q8_k(q)
        else:
            values = dequantize(q, qtype)
        values = values.astype(np.float32).reshape(-1)
        assert values.size == rows * cols and np.isfinite(values).all(), name
        expected[name] = {"type": qtype.name, "ne": ne, "values": [float(v) for v in values]}
    # An IQ2_XXS block of 256: the runtime refuses it by name (UNIMPLEMENTED).
    k = np.zeros((1, 66), dtype=np.uint8)
    w.add_tensor("iq2_xxs", k, raw_shape=k.shape, raw_dtype=T.IQ2_XXS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "dequant.json"), "w") as f:
        json.dump({"generator": {"gguf": _version()}, "tensors": expected}, f)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and dequant.json")


def _dequantize_q8_k(q):
    """ggml's dequantize_row_q8_K (the gguf package has no Q8_K): x = d * q, in f32."""
    blocks = q.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32)  # (n_blocks, 1)
    qs = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
    return d * qs


def _version():
    from importlib.metadata import version
    return version("gguf")


if __name__ == "__main__":
    main()
