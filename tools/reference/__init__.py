"""SpanServe PyTorch reference model (spannorm.py) and an independent float64 numpy
implementation used to check it (numpy_ref.py)."""
from .spannorm import (PLACEMENTS, ModelConfig, SpanModel, build_random, init_weights,
                       load_model, read_tensors, save_model)

__all__ = ["PLACEMENTS", "ModelConfig", "SpanModel", "build_random", "init_weights",
           "load_model", "read_tensors", "save_model"]
