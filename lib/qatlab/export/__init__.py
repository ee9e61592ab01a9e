"""Deploy path: the IntModel as an ONNX QDQ graph, and ONNX Runtime as an outside check.

    from qatlab.export import export_onnx, run_onnx, compare_onnx
    info = export_onnx(int_model, "model.onnx")           # or a QAT model + input_shape
    out = run_onnx("model.onnx", x)                       # out.logits, out.codes
    cmp = compare_onnx(int_model, "model.onnx", x, y)     # accuracies and agreement

The graph is written from the IntModel (integer weights, int32 biases, per-tensor
activation and per-channel weight scales), so ONNX Runtime runs the same network the
CPU reference runs; ``compare_onnx`` measures how often they disagree, and
``emulate_ort`` replays ONNX Runtime's float32 requantization on the IntModel to show
where the disagreements come from.
"""

from .errors import ExportError, UnsupportedLayerError
from .qdq import LOW_BIT_FORMS, ExportInfo, build_onnx, export_onnx
from .runtime import LayerDiff, OnnxComparison, compare_onnx, emulate_ort
from .session import OnnxOutputs, ort_kernels, ort_session, predict_onnx, run_onnx

__all__ = [
    "ExportError",
    "UnsupportedLayerError",
    "ExportInfo",
    "LOW_BIT_FORMS",
    "build_onnx",
    "export_onnx",
    "OnnxOutputs",
    "OnnxComparison",
    "LayerDiff",
    "run_onnx",
    "predict_onnx",
    "compare_onnx",
    "emulate_ort",
    "ort_session",
    "ort_kernels",
]
