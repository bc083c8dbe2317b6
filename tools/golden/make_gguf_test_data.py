#!/usr/bin/env python3
"""Writes tests/data/gguf/dequant.gguf (a tiny GGUF v3 file with one tensor per supported
type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, plus one Q4_K the runtime must refuse) and
tests/data/gguf/dequant.json (each tensor's values as the Python `gguf` package's
gguf.quants.dequantize gives them), for tests/unit/runtime/gguf/dequantize_test.cc.

Run with the project's .venv:  .venv/bin/python tools/golden/make_gguf_test_data.py
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
    # A K-quant block of 256: the runtime refuses it by name (UNIMPLEMENTED).
    k = np.zeros((1, 144), dtype=np.uint8)
    w.add_tensor("q4_k", k, raw_shape=k.shape, raw_dtype=T.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(os.path.join(OUT, "dequant.json"), "w") as f:
        json.dump({"generator": {"gguf": _version()}, "tensors": expected}, f)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and dequant.json")


def _version():
    from importlib.metadata import version
    return version("gguf")


if __name__ == "__main__":
    main()
