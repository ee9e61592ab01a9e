"""Loading and running an exported graph in ONNX Runtime (CPU provider).

Both the exporter (its load-and-run check) and the comparison with the IntModel
(:mod:`.runtime`) run graphs through here.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ExportError
from .names import CODES_NAME, INPUT_NAME, LOGITS_NAME

OPTIMIZATIONS = ("all", "extended", "basic", "disable")


def ort_session(model: str | os.PathLike[str] | bytes, *, optimization: str = "all", threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider.

    ``optimization``: ONNX Runtime's graph optimization level; ``"all"`` (its default)
    fuses the QDQ groups into integer kernels, ``"disable"`` runs every Q, DQ and
    float op as written. ``threads`` defaults to ORT's own choice.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort_session_level(optimization)
    so.log_severity_level = 3
    # Batch inference: idle pool threads should sleep, not spin on cores others need.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def ort_kernels(model: str | os.PathLike[str] | bytes, *, optimization: str = "all") -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually executes after its optimizations
    (e.g. ``QLinearConv`` where a DQ→Conv→Q group was fused into an integer kernel)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort_session_level(optimization)
        so.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        src = model if isinstance(model, bytes) else os.fspath(model)
        ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
        graph = onnx.load(so.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for n in graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def ort_session_level(optimization: str) -> Any:
    import onnxruntime as ort

    if optimization not in OPTIMIZATIONS:
        raise ExportError(f"optimization {optimization!r} is unknown; expected one of {', '.join(OPTIMIZATIONS)}")
    return {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]


class OnnxOutputs(NamedTuple):
    logits: torch.Tensor  # float32 [N, classes]: the dequantized codes
    codes: torch.Tensor  # int32 [N, classes]: the last QuantizeLinear's codes
    extra: dict[str, torch.Tensor]  # other graph outputs (exposed intermediate codes), int32


def open_session(model: Any, optimization: str = "all", threads: int | None = None) -> Any:
    """``model`` itself if it is already a session, else an ``ort_session`` on it."""
    if hasattr(model, "run") and hasattr(model, "get_inputs"):
        return model
    return ort_session(model, optimization=optimization, threads=threads)


def run_onnx(
    model: str | os.PathLike[str] | bytes | Any,
    x: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 1000,
    optimization: str = "all",
    threads: int | None = None,
) -> OnnxOutputs:
    """Logits and output codes of an exported graph (a path, bytes or a session) on float inputs ``x``."""
    sess = open_session(model, optimization, threads)
    xs = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    types = {o.name: o.type for o in sess.get_outputs()}
    if LOGITS_NAME not in types or CODES_NAME not in types:
        raise ExportError(f"the graph's outputs {sorted(types)} lack '{LOGITS_NAME}'/'{CODES_NAME}': not a qatlab export")
    # onnxruntime's Python API cannot hand out 4-bit tensors; the codes of a 4-bit
    # output are recovered from the logits (exact: logits = s·(q − z) in float32).
    names = [n for n, t in types.items() if "int4" not in t]
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, xs.shape[0], batch_size):
        res = sess.run(names, {INPUT_NAME: np.ascontiguousarray(xs[start : start + batch_size])})
        for n, r in zip(names, res):
            outs[n].append(r)
    cat = {n: np.concatenate(v) for n, v in outs.items() if v}
    if not cat:  # no inputs
        shape = (0, *[d if isinstance(d, int) else 0 for d in sess.get_outputs()[0].shape[1:]])
        cat = {n: np.empty(shape, dtype=np.float32) for n in names}
    logits = cat[LOGITS_NAME].astype(np.float32)
    if CODES_NAME in cat:
        codes = cat[CODES_NAME].astype(np.int32)
    else:
        meta = sess.get_modelmeta().custom_metadata_map
        scale, zp = np.float32(float(meta["qatlab.output_scale"])), int(meta["qatlab.output_zero_point"])
        codes = (np.rint(logits / scale) + zp).astype(np.int32)
    extra = {n: torch.from_numpy(v.astype(np.int32)) for n, v in cat.items() if n not in (LOGITS_NAME, CODES_NAME)}
    return OnnxOutputs(torch.from_numpy(logits), torch.from_numpy(codes), extra)


def predict_onnx(model: str | os.PathLike[str] | bytes | Any, x: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Class predictions: argmax of the output codes, first index on ties, as ``intmodel.predict``."""
    return run_onnx(model, x, **kw).codes.argmax(dim=1)


__all__ = ["OPTIMIZATIONS", "OnnxOutputs", "open_session", "ort_kernels", "ort_session", "ort_session_level", "predict_onnx", "run_onnx"]
