"""Write finn_reference.json: FINN's own cost functions evaluated on real FINN nodes.

Run with a Python that has FINN (finn-plus 1.6.1) and qonnx installed; CI never runs
this, it only reads the JSON it writes::

    /path/to/finn-venv/bin/python tests/hw/fpga/data/make_finn_reference.py [FINN_SRC]

finn-plus dropped AddStreams and ChannelwiseOp; FINN_SRC, a checkout of Xilinx FINN
(v0.10), supplies those two node classes, loaded on top of finn-plus' base classes.
Without it their cases are left out.

Every case builds the node as FINN's flow leaves it under its default build settings
(``standalone_thresholds=False``: thresholds stay inside the MVAU; weights
``mem_mode=internal_decoupled``, ``ram_style=auto``; the sliding window's
``ram_style`` its default), lets ``SpecializeLayers``' own rule pick the HLS or RTL
variant, runs ``minimize_accumulator_width`` on the graph, and records
``get_exp_cycles`` and the LUT/BRAM18/URAM/DSP estimates. Weights are a fixed
arithmetic pattern (:func:`weights`) the test rebuilds, so accumulator widths can be
compared too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from finn.transformation.fpgadataflow.specialize_layers import _determine_impl_style
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

OUT = Path(__file__).with_name("finn_reference.json")
PARTS = {"U250": "xcu250-figd2104-2L-e", "PYNQ-Z1": "xc7z020clg400-1", "ZCU104": "xczu7ev-ffvc1156-2-e"}
DOMAIN = "finn.custom_op.fpgadataflow"


def weights(mh: int, mw: int, bits: int, signed: bool, pattern: int, narrow: bool) -> np.ndarray:
    """[MW, MH] weights from a fixed pattern (the test rebuilds the same matrix):
    ``w[j, i] = lo + (7·i + 13·j + pattern) mod span`` over the type's (narrow) range."""
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if narrow and signed:
        lo += 1
    span = hi - lo + 1
    i = np.arange(mh)[None, :]
    j = np.arange(mw)[:, None]
    return (lo + (7 * i + 13 * j + pattern) % span).astype(np.float32)


def int_dt(bits: int, signed: bool) -> DataType:
    return DataType[f"{'INT' if signed else 'UINT'}{bits}"]


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> ModelWrapper:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = ModelWrapper(helper.make_model(graph))
    for k, v in inits.items():
        model.set_initializer(k, v)
    return model


def _specialize(model: ModelWrapper, node, part: str) -> str:
    style = _determine_impl_style(node, part, model)
    node.op_type = f"{node.op_type}_{style}"
    node.domain = f"{DOMAIN}.{style}"
    return style


def _estimates(inst, part: str) -> dict:
    return {
        "cycles": int(inst.get_exp_cycles()),
        "lut": int(inst.lut_estimation(part)),
        "bram18": int(inst.bram_estimation(part)),
        "uram": int(inst.uram_estimation(part)),
        "dsp": int(inst.dsp_estimation(part)),
    }


def mvau_case(c: dict) -> dict:
    part = PARTS[c["device"]]
    mh, mw, vecs = c["mh"], c["mw"], c["vectors"]
    idt = int_dt(c["a_bits"], c["a_signed"])
    wdt = int_dt(c["w_bits"], True)
    act = c["out_bits"] is not None
    odt = int_dt(c["out_bits"], False) if act else DataType["INT32"]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, vecs, mw])
    mid = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, vecs, mh])
    ins = ["x", "w"] + (["t"] if act else [])
    node = helper.make_node(
        "MVAU",
        ins,
        ["y"],
        domain=DOMAIN,
        backend="fpgadataflow",
        MW=mw,
        MH=mh,
        PE=c["pe"],
        SIMD=c["simd"],
        inputDataType=idt.name,
        weightDataType=wdt.name,
        outputDataType=odt.name,
        noActivation=0 if act else 1,
        numInputVectors=[1, vecs],
        ActVal=0,
        mem_mode="internal_decoupled",
        ram_style=c["ram_style"],
        name="mvau",
    )
    nodes, outputs = [node], [mid]
    if not c["last"]:
        # A consumer after the MVAU, so it is not the graph's last node.
        out = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, vecs, mh])
        nodes.append(helper.make_node("Relu", ["y"], ["z"], name="after"))
        outputs = [out]
    inits = {"w": weights(mh, mw, c["w_bits"], True, c["pattern"], c["narrow"])}
    if act:
        n_thr = (1 << c["out_bits"]) - 1
        inits["t"] = np.tile(np.arange(n_thr, dtype=np.float32), (mh, 1))
    model = _model(nodes, [inp], outputs, inits)
    model.set_tensor_datatype("x", idt)
    model.set_tensor_datatype("w", wdt)
    inst = getCustomOp(node)
    acc = inst.minimize_accumulator_width(model)
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, "acc_bits": acc.bitwidth(), **_estimates(inst, part)}


def swu_case(c: dict) -> dict:
    part = PARTS[c["device"]]
    ch, (ih, iw), (kh, kw), (sh, sw) = c["channels"], c["ifm"], c["kernel"], c["stride"]
    oh, ow = (ih - kh) // sh + 1, (iw - kw) // sw + 1
    dt = int_dt(c["a_bits"], False)
    attrs = dict(
        ConvKernelDim=[kh, kw],
        IFMChannels=ch,
        IFMDim=[ih, iw],
        OFMDim=[oh, ow],
        SIMD=c["simd"],
        Stride=[sh, sw],
        Dilation=[1, 1],
        inputDataType=dt.name,
        outputDataType=dt.name,
        depthwise=int(c.get("depthwise", 0)),
        parallel_window=int(c["parallel_window"]),
        name="swu",
    )
    if c.get("ram_style"):
        attrs["ram_style"] = c["ram_style"]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ih, iw, ch])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oh, ow, kh * kw * ch])
    node = helper.make_node("ConvolutionInputGenerator", ["x"], ["y"], domain=DOMAIN, backend="fpgadataflow", **attrs)
    model = _model([node], [inp], [out], {})
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, "default_ram_style": inst.get_nodeattr("ram_style"), **_estimates(inst, part)}


def thresholding_case(c: dict) -> dict:
    part = PARTS[c["device"]]
    ch, pe, pix = c["channels"], c["pe"], c["pixels"]
    idt = int_dt(c["in_bits"], c["in_signed"])
    tdt = int_dt(c["thr_bits"], c["in_signed"])
    odt = int_dt(c["out_bits"], False)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, pix, ch])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, pix, ch])
    node = helper.make_node(
        "Thresholding",
        ["x", "t"],
        ["y"],
        domain=DOMAIN,
        backend="fpgadataflow",
        NumChannels=ch,
        PE=pe,
        numSteps=(1 << c["out_bits"]) - 1,
        inputDataType=idt.name,
        weightDataType=tdt.name,
        outputDataType=odt.name,
        numInputVectors=[1, pix],
        ActVal=0,
        name="thr",
    )
    n_thr = (1 << c["out_bits"]) - 1
    model = _model([node], [inp], [out], {"t": np.tile(np.arange(n_thr, dtype=np.float32), (ch, 1))})
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, **_estimates(inst, part)}


def vvau_case(c: dict) -> dict:
    part = PARTS[c["device"]]
    ch, (kh, kw), (oh, ow) = c["channels"], c["kernel"], c["dim"]
    idt = int_dt(c["a_bits"], c["a_signed"])
    wdt = int_dt(c["w_bits"], True)
    act = c["out_bits"] is not None
    odt = int_dt(c["out_bits"], False) if act else DataType["INT32"]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, oh, ow, kh * kw * ch])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oh, ow, ch])
    ins = ["x", "w"] + (["t"] if act else [])
    node = helper.make_node(
        "VVAU",
        ins,
        ["y"],
        domain=DOMAIN,
        backend="fpgadataflow",
        PE=c["pe"],
        SIMD=c["simd"],
        Dim=[oh, ow],
        Channels=ch,
        Kernel=[kh, kw],
        resType="auto",
        inputDataType=idt.name,
        weightDataType=wdt.name,
        outputDataType=odt.name,
        noActivation=0 if act else 1,
        ActVal=0,
        mem_mode="internal_decoupled",
        name="vvau",
    )
    # FINN's VVAU weights: [C, 1, k_h, k_w]; the pattern over (channel, tap).
    w = weights(kh * kw, ch, c["w_bits"], True, c["pattern"], False).T.reshape(ch, 1, kh, kw)
    inits = {"w": w}
    if act:
        inits["t"] = np.tile(np.arange((1 << c["out_bits"]) - 1, dtype=np.float32), (ch, 1))
    outputs = [out]
    nodes = [node]
    if not c["last"]:
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, oh, ow, ch])]
        nodes.append(helper.make_node("Relu", ["y"], ["z"], name="after"))
    model = _model(nodes, [inp], outputs, inits)
    model.set_tensor_datatype("x", idt)
    model.set_tensor_datatype("w", wdt)
    inst = getCustomOp(node)
    acc = inst.minimize_accumulator_width(model)
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, "acc_bits": acc.bitwidth(), **_estimates(inst, part)}


def _node(op: str, ins: list[str], style: str, **attrs):
    return helper.make_node(f"{op}_{style}", ins, ["y"], domain=f"{DOMAIN}.{style}", backend="fpgadataflow", name=op.lower(), **attrs)


def _finn_v010(src: Path):
    """AddStreams_hls and ChannelwiseOp_hls from a Xilinx FINN checkout."""
    import importlib.util

    def load(name: str, path: Path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    base = src / "src" / "finn" / "custom_op" / "fpgadataflow"
    load(f"{DOMAIN}.channelwise_op", base / "channelwise_op.py")
    load(f"{DOMAIN}.addstreams", base / "addstreams.py")
    cw = load(f"{DOMAIN}.hls.channelwise_op_hls", base / "hls" / "channelwise_op_hls.py")
    ad = load(f"{DOMAIN}.hls.addstreams_hls", base / "hls" / "addstreams_hls.py")
    return cw.ChannelwiseOp_hls, ad.AddStreams_hls


def unit_case(c: dict, v010) -> dict:
    """A streaming unit's cycles and estimates (FINN has none for most: they are 0)."""
    part = PARTS[c["device"]]
    k = c["kind"]
    vecs = [1] + list(c.get("vectors", ()))
    if k == "pool":
        (kh, kw), (oh, ow) = c["kernel"], c["out"]
        n = _node(
            "Pool",
            ["x"],
            "hls",
            Channels=c["channels"],
            PE=c["pe"],
            KernelSize=[kh, kw],
            Function=c["function"],
            OutImgDims=[oh, ow],
            PoolDim=[kh, kw],
            InputDataType=int_dt(c["bits"], False).name,
            OutputDataType=int_dt(c["out_bits"], False).name,
            AccumBits=c.get("acc_bits", 0),
            Size=kh * kw,
        )
        inst = getCustomOp(n)
    elif k == "concat":
        n = _node(
            "StreamingConcat",
            ["a", "b"],
            "hls",
            SIMD=c["simd"],
            ChannelsPerStream=c["channels"],
            inputDataTypes=[int_dt(c["bits"], False).name] * len(c["channels"]),
            numInputVectors=vecs,
        )
        inst = getCustomOp(n)
    elif k == "globalaccpool":
        n = _node(
            "GlobalAccPool",
            ["x"],
            "hls",
            NumChannels=c["channels"],
            PE=c["pe"],
            inputDataType=int_dt(c["bits"], False).name,
            numInputVectors=vecs,
        )
        inst = getCustomOp(n)
    elif k in ("channelwise", "addstreams"):
        if v010 is None:
            return {}
        cw_cls, ad_cls = v010
        dt = int_dt(c["bits"], True).name
        if k == "channelwise":
            n = _node(
                "ChannelwiseOp",
                ["x", "p"],
                "hls",
                NumChannels=c["channels"],
                PE=c["pe"],
                Func="mul",
                inputDataType=dt,
                paramDataType="INT17",
                outputDataType="INT32",
                numInputVectors=vecs,
            )
            inst = cw_cls(n)
            return {
                "impl": "hls",
                "cycles": int(inst.get_exp_cycles()),
                "lut": int(inst.lut_estimation()),
                "bram18": int(inst.bram_estimation()),
                "uram": 0,
                "dsp": 0,
            }
        n = _node(
            "AddStreams",
            ["a", "b"],
            "hls",
            NumChannels=c["channels"],
            PE=c["pe"],
            inputDataTypes=[dt, dt],
            outputDataType=int_dt(c["bits"] + 1, True).name,
            numInputVectors=vecs,
        )
        inst = ad_cls(n)
    else:
        raise ValueError(k)
    return {"impl": "hls", **_estimates(inst, part)}


def pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's (and ONNX's) pooled size; in ceil mode the last window must start
    inside the input or its left padding (the test uses the same rule)."""
    n = size + 2 * p - k
    out = (-(-n // s) if ceil else n // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def maxpool_case(c: dict) -> dict:
    """A 2-D max pool as FINN converts it: an ONNX MaxPool (NCHW) through finn-plus'
    ``InferPool`` and ``InferConvInpGen``, every HW node specialized and folded to the
    case's PE (the window's SIMD, the padding's SIMD and the Pool's PE alike, as the
    depthwise window requires). Records FINN's node chain and each node's values."""
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    part = PARTS[c["device"]]
    ch, (ih, iw), (kh, kw), (sh, sw), (ph, pw) = c["channels"], c["ifm"], c["kernel"], c["stride"], c["padding"]
    ceil = bool(c.get("ceil_mode"))
    oh, ow = pool_out(ih, kh, sh, ph, ceil), pool_out(iw, kw, sw, pw, ceil)
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ch, ih, iw])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, ch, oh, ow])
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], ceil_mode=int(ceil))
    model = _model([node], [inp], [out], {})
    model.set_tensor_datatype("x", int_dt(c["bits"], False))
    model = model.transform(InferShapes()).transform(InferDataTypes())
    model = model.transform(InferPool()).transform(InferConvInpGen())
    nodes = []
    for n in model.graph.node:
        if not n.domain.startswith(DOMAIN):
            continue  # the layout Transposes around the NHWC nodes
        style = _specialize(model, n, part)
        inst = getCustomOp(n)
        inst.set_nodeattr("PE" if n.op_type.startswith("Pool") else "SIMD", c["pe"])
        nodes.append({"op": n.op_type, "impl": style, **_estimates(inst, part)})
    return {"nodes": nodes}


def maxpool_grid() -> list[dict]:
    base = dict(device="U250", bits=8, padding=(0, 0))
    return [
        # LeNet's 2x2/2 pools and odd images (the last row and column dropped)
        {**base, "channels": 32, "ifm": (28, 28), "kernel": (2, 2), "stride": (2, 2), "pe": 32},
        {**base, "channels": 64, "ifm": (14, 14), "kernel": (2, 2), "stride": (2, 2), "pe": 8},
        {**base, "channels": 64, "ifm": (7, 7), "kernel": (2, 2), "stride": (2, 2), "pe": 4, "bits": 4},
        {**base, "channels": 3, "ifm": (15, 9), "kernel": (2, 2), "stride": (2, 2), "pe": 1, "bits": 2},
        {**base, "channels": 16, "ifm": (9, 9), "kernel": (3, 3), "stride": (3, 3), "pe": 16},
        # kernel above the stride, with and without padding (ResNet's stem pool)
        {**base, "channels": 64, "ifm": (112, 112), "kernel": (3, 3), "stride": (2, 2), "padding": (1, 1), "pe": 16},
        {**base, "channels": 16, "ifm": (8, 8), "kernel": (3, 3), "stride": (2, 2), "pe": 2},
        {**base, "channels": 24, "ifm": (11, 11), "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "pe": 6, "bits": 4},
        # 1-D (a 1-row image)
        {**base, "channels": 32, "ifm": (1, 64), "kernel": (1, 2), "stride": (1, 2), "pe": 8},
        {**base, "channels": 8, "ifm": (1, 33), "kernel": (1, 3), "stride": (1, 3), "pe": 8},
        # ceil mode: InferPool ignores it, but the window takes its output size from the
        # graph, so FINN's nodes walk the ceil-size output over the unpadded input
        {**base, "channels": 16, "ifm": (7, 7), "kernel": (2, 2), "stride": (2, 2), "pe": 4, "ceil_mode": True},
        {**base, "channels": 32, "ifm": (10, 10), "kernel": (3, 3), "stride": (2, 2), "pe": 32, "ceil_mode": True},
        {**base, "channels": 8, "ifm": (1, 33), "kernel": (1, 2), "stride": (1, 2), "pe": 2, "ceil_mode": True},
    ]


def padded_conv_case(c: dict) -> dict:
    """A padded 2-D conv (dense or depthwise) as finn-plus converts it: an ONNX Conv
    (NCHW) through qonnx' ``LowerConvsToMatMul`` (an ``Im2Col`` with ``pad_amount``),
    ``InferConvInpGen`` (``FMPadding`` + ``ConvolutionInputGenerator``) and
    ``InferQuantizedMatrixVectorActivation`` or ``InferVectorVectorActivation``; every HW
    node specialized and folded as the case says (the padding at the window's SIMD;
    a depthwise window's SIMD is the VVAU's PE, its parallel mode on with VVAU SIMD > 1,
    as SetFolding sets them). Records FINN's node chain and each node's values."""
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation import InferVectorVectorActivation
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    part = PARTS[c["device"]]
    ch, co, (ih, iw), (kh, kw), (sh, sw), (ph, pw) = c["channels"], c["out_channels"], c["ifm"], c["kernel"], c["stride"], c["padding"]
    dw = bool(c["depthwise"])
    groups = ch if dw else 1
    oh, ow = (ih + 2 * ph - kh) // sh + 1, (iw + 2 * pw - kw) // sw + 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ch, ih, iw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, co, oh, ow])
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], group=groups)
    w = weights(kh * kw * (ch // groups), co, c["w_bits"], True, c["pattern"], False).T.reshape(co, ch // groups, kh, kw)
    model = _model([conv], [x], [y], {"w": w})
    model.set_tensor_datatype("x", int_dt(c["a_bits"], False))
    model.set_tensor_datatype("w", int_dt(c["w_bits"], True))
    model = model.transform(InferShapes()).transform(InferDataTypes()).transform(LowerConvsToMatMul())
    model = model.transform(InferConvInpGen())
    model = model.transform(InferVectorVectorActivation() if dw else InferQuantizedMatrixVectorActivation())
    nodes = []
    for n in model.graph.node:
        if not n.domain.startswith(DOMAIN):
            continue  # the layout Transposes around the NHWC nodes
        style = _specialize(model, n, part)
        inst = getCustomOp(n)
        op = n.op_type.rsplit("_", 1)[0]
        if op in ("MVAU", "VVAU"):
            inst.set_nodeattr("PE", c["pe"])
            inst.set_nodeattr("SIMD", c["simd"])
        else:
            inst.set_nodeattr("SIMD", c["swu_simd"])
        if op == "ConvolutionInputGenerator":
            inst.set_nodeattr("parallel_window", int(c["parallel_window"]))
        nodes.append({"op": n.op_type, "impl": style, **_estimates(inst, part)})
    return {"nodes": nodes}


def padded_conv_grid() -> list[dict]:
    base = dict(device="U250", stride=(1, 1), depthwise=False, a_bits=8, w_bits=8, parallel_window=False, pattern=2)
    return [
        {
            **base,
            "channels": 16,
            "out_channels": 32,
            "ifm": (16, 16),
            "kernel": (3, 3),
            "padding": (1, 1),
            "pe": 4,
            "simd": 16,
            "swu_simd": 16,
        },
        {
            **base,
            "channels": 16,
            "out_channels": 16,
            "ifm": (16, 16),
            "kernel": (3, 3),
            "padding": (1, 1),
            "pe": 2,
            "simd": 4,
            "swu_simd": 4,
        },
        {
            **base,
            "channels": 8,
            "out_channels": 16,
            "ifm": (12, 12),
            "kernel": (5, 5),
            "padding": (2, 2),
            "pe": 8,
            "simd": 8,
            "swu_simd": 8,
        },
        {
            **base,
            "channels": 32,
            "out_channels": 64,
            "ifm": (17, 17),
            "kernel": (3, 3),
            "stride": (2, 2),
            "padding": (1, 1),
            "pe": 16,
            "simd": 32,
            "swu_simd": 32,
            "a_bits": 4,
            "w_bits": 4,
        },
        {**base, "channels": 3, "out_channels": 8, "ifm": (7, 5), "kernel": (3, 3), "padding": (1, 1), "pe": 1, "simd": 3, "swu_simd": 3},
        {
            **base,
            "channels": 3,
            "out_channels": 16,
            "ifm": (32, 32),
            "kernel": (3, 3),
            "padding": (1, 1),
            "pe": 16,
            "simd": 27,
            "swu_simd": 3,
            "parallel_window": True,
        },
        {
            **base,
            "channels": 8,
            "out_channels": 8,
            "ifm": (9, 11),
            "kernel": (3, 3),
            "stride": (2, 2),
            "padding": (1, 1),
            "pe": 2,
            "simd": 8,
            "swu_simd": 8,
            "a_bits": 2,
            "w_bits": 2,
        },
        # depthwise: the window's SIMD is the VVAU's PE
        {
            **base,
            "depthwise": True,
            "channels": 32,
            "out_channels": 32,
            "ifm": (16, 16),
            "kernel": (3, 3),
            "padding": (1, 1),
            "pe": 8,
            "simd": 1,
            "swu_simd": 8,
        },
        {
            **base,
            "depthwise": True,
            "channels": 16,
            "out_channels": 16,
            "ifm": (9, 9),
            "kernel": (3, 3),
            "stride": (2, 2),
            "padding": (1, 1),
            "pe": 16,
            "simd": 3,
            "swu_simd": 16,
            "parallel_window": True,
        },
        {
            **base,
            "depthwise": True,
            "channels": 24,
            "out_channels": 24,
            "ifm": (7, 7),
            "kernel": (5, 5),
            "padding": (2, 2),
            "pe": 6,
            "simd": 1,
            "swu_simd": 6,
            "a_bits": 4,
            "w_bits": 4,
        },
    ]


def elementwise_add_case(c: dict) -> dict:
    """A residual add of two quantized streams as finn-plus' ``step_convert_to_hw``
    converts the streamlined graph: ``InferThresholdingLayer`` (the requantization) and
    ``InferElementwiseBinaryOperation``, then ``minimize_accumulator_width`` and
    ``SpecializeLayers``, every node at the case's PE. With a shared scale (moved past
    the add by streamlining) the add sums the integer codes; with two scales each input
    keeps its ``Mul`` by a float constant (an ``ElementwiseMul``) and the sum is float.
    The rhs may be a per-channel stream broadcast over the image."""
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import InferElementwiseBinaryOperation
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    part = PARTS[c["device"]]
    (h, w), ch = c["dim"], c["channels"]
    lhs, rhs = [1, h, w, ch], [1, 1, 1, ch] if c["broadcast"] else [1, h, w, ch]
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, lhs)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, rhs)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, lhs)
    nodes, ins, inits = [], ["a", "b"], {}
    if not c["shared_scale"]:
        nodes = [helper.make_node("Mul", ["a", "sa"], ["ma"]), helper.make_node("Mul", ["b", "sb"], ["mb"])]
        inits = {"sa": np.array([0.05], np.float32), "sb": np.array([0.07], np.float32)}
        ins = ["ma", "mb"]
    nodes.append(helper.make_node("Add", ins, ["s"]))
    n_thr = (1 << c["out_bits"]) - 1
    nodes.append(
        helper.make_node(
            "MultiThreshold", ["s", "t"], ["y"], domain="qonnx.custom_op.general", out_dtype=f"UINT{c['out_bits']}", data_layout="NHWC"
        )
    )
    inits["t"] = np.tile(np.arange(n_thr, dtype=np.float32), (ch, 1))
    model = _model(nodes, [a, b], [y], inits)
    model.set_tensor_datatype("a", int_dt(c["lhs_bits"], c["lhs_signed"]))
    model.set_tensor_datatype("b", int_dt(c["rhs_bits"], c["rhs_signed"]))
    model = model.transform(InferShapes()).transform(InferDataTypes())
    model = model.transform(InferThresholdingLayer()).transform(InferElementwiseBinaryOperation())
    # The sum's width as FINN minimizes it; then the thresholds span that input range
    # (RoundAndClipThresholds clips real ones to it) and the value-based
    # minimize_weight_bit_width of the default build sizes them.
    model = model.transform(InferShapes()).transform(InferDataTypes()).transform(MinimizeAccumulatorWidth())
    model = model.transform(InferDataTypes())
    thr = model.get_nodes_by_op_type("Thresholding")[0]
    idt = model.get_tensor_datatype(thr.input[0])
    if idt.is_integer():
        span = np.linspace(idt.min(), idt.max(), n_thr).round().astype(np.float32)
        model.set_initializer(thr.input[1], np.tile(span, (ch, 1)))
        model.set_tensor_datatype(thr.input[1], idt)  # integer thresholds, as after rounding
        getCustomOp(thr).set_nodeattr("weightDataType", idt.name)
    model = model.transform(MinimizeWeightBitWidth())
    out = []
    for n in model.graph.node:
        style = _specialize(model, n, part)
        inst = getCustomOp(n)
        inst.set_nodeattr("PE", c["pe"])
        dt = model.get_tensor_datatype(n.input[0])
        rec = {"op": n.op_type, "impl": style, "in_bits": dt.bitwidth(), "in_float": not dt.is_integer()}
        if n.op_type.startswith("Thresholding"):
            rec["thr_bits"] = DataType[inst.get_nodeattr("weightDataType")].bitwidth()
        out.append({**rec, **_estimates(inst, part)})
    return {"nodes": out}


def elementwise_add_grid() -> list[dict]:
    base = dict(device="U250", broadcast=False, shared_scale=True, lhs_signed=False, rhs_signed=False, out_bits=8)
    return [
        # a shared scale: the integer codes are summed
        {**base, "channels": 16, "dim": (8, 8), "pe": 4, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "channels": 64, "dim": (4, 4), "pe": 64, "lhs_bits": 4, "rhs_bits": 4, "out_bits": 4},
        {**base, "channels": 10, "dim": (3, 5), "pe": 5, "lhs_bits": 8, "rhs_bits": 3, "rhs_signed": True},
        {
            **base,
            "channels": 32,
            "dim": (2, 2),
            "pe": 1,
            "lhs_bits": 2,
            "rhs_bits": 6,
            "lhs_signed": True,
            "rhs_signed": True,
            "out_bits": 2,
        },
        {**base, "device": "PYNQ-Z1", "channels": 24, "dim": (7, 7), "pe": 8, "lhs_bits": 5, "rhs_bits": 5, "lhs_signed": True},
        # two scales: a float ElementwiseMul per input, a float sum
        {**base, "shared_scale": False, "channels": 16, "dim": (8, 8), "pe": 4, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "shared_scale": False, "channels": 64, "dim": (4, 4), "pe": 16, "lhs_bits": 4, "rhs_bits": 6, "out_bits": 4},
        {
            **base,
            "shared_scale": False,
            "channels": 12,
            "dim": (5, 5),
            "pe": 3,
            "lhs_bits": 2,
            "rhs_bits": 7,
            "rhs_signed": True,
            "out_bits": 6,
        },
        # a per-channel rhs broadcast over the image
        {**base, "broadcast": True, "channels": 32, "dim": (4, 4), "pe": 8, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "broadcast": True, "shared_scale": False, "channels": 32, "dim": (4, 4), "pe": 2, "lhs_bits": 6, "rhs_bits": 8},
    ]


def elementwise_mul_case(c: dict) -> dict:
    """``ElementwiseMul`` of two streams as finn-plus' ``InferElementwiseBinaryOperation``
    makes it (both operands ``input`` style), after ``minimize_accumulator_width`` and
    ``SpecializeLayers``; the rhs may be a per-channel gate broadcast over the image."""
    part = PARTS[c["device"]]
    (h, w), ch = c["dim"], c["channels"]
    lhs, rhs = [1, h, w, ch], [1, 1, 1, ch] if c["broadcast"] else [1, h, w, ch]
    ldt, rdt = int_dt(c["lhs_bits"], False), int_dt(c["rhs_bits"], False)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, lhs)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, rhs)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, lhs)
    node = helper.make_node(
        "ElementwiseMul",
        ["a", "b"],
        ["y"],
        domain=DOMAIN,
        backend="fpgadataflow",
        lhs_shape=lhs,
        rhs_shape=rhs,
        out_shape=lhs,
        lhs_dtype=ldt.name,
        rhs_dtype=rdt.name,
        out_dtype="INT32",
        lhs_style="input",
        rhs_style="input",
        PE=c["pe"],
        name="mul",
    )
    model = _model([node], [a, b], [y], {})
    model.set_tensor_datatype("a", ldt)
    model.set_tensor_datatype("b", rdt)
    out_dt = getCustomOp(node).minimize_accumulator_width(model)
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, "out_bits": out_dt.bitwidth(), **_estimates(inst, part)}


def elementwise_mul_grid() -> list[dict]:
    base = dict(device="U250", broadcast=True)
    return [
        # squeeze-excitation gates: a per-channel stream broadcast over the image
        {**base, "channels": 16, "dim": (16, 16), "pe": 1, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "channels": 96, "dim": (8, 8), "pe": 8, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "channels": 120, "dim": (3, 3), "pe": 120, "lhs_bits": 4, "rhs_bits": 8},
        {**base, "device": "PYNQ-Z1", "channels": 160, "dim": (4, 4), "pe": 5, "lhs_bits": 6, "rhs_bits": 3},
        # two full streams
        {**base, "broadcast": False, "channels": 32, "dim": (8, 8), "pe": 4, "lhs_bits": 8, "rhs_bits": 8},
        {**base, "broadcast": False, "channels": 10, "dim": (1, 1), "pe": 10, "lhs_bits": 2, "rhs_bits": 5},
    ]


def lookup_case(c: dict) -> dict:
    """FINN's ``Lookup`` (its only table unit) holding an activation's table: one
    embedding of one element per input code over the whole (H, W, C) stream."""
    part = PARTS[c["device"]]
    (h, w), ch = c["dim"], c["channels"]
    idt = int_dt(c["in_bits"], False)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, h, w, ch])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, h, w, ch, 1])
    node = helper.make_node(
        "Lookup",
        ["x", "t"],
        ["y"],
        domain=DOMAIN,
        backend="fpgadataflow",
        NumEmbeddings=1 << c["in_bits"],
        EmbeddingDim=1,
        EmbeddingType=int_dt(c["out_bits"], False).name,
        InputType=idt.name,
        InputShape=[1, h, w, ch],
        name="lookup",
    )
    table = (np.arange(1 << c["in_bits"]) % (1 << c["out_bits"])).astype(np.float32).reshape(-1, 1)
    model = _model([node], [x], [y], {"t": table})
    model.set_tensor_datatype("x", idt)
    style = _specialize(model, node, part)
    inst = getCustomOp(node)
    return {"impl": style, "default_ram_style": inst.get_nodeattr("ram_style"), **_estimates(inst, part)}


def lookup_grid() -> list[dict]:
    base = dict(device="U250")
    return [
        {**base, "channels": 16, "dim": (16, 16), "in_bits": 8, "out_bits": 8},
        {**base, "channels": 3, "dim": (7, 5), "in_bits": 4, "out_bits": 4},
        {**base, "channels": 64, "dim": (2, 2), "in_bits": 8, "out_bits": 2},
        {**base, "device": "PYNQ-Z1", "channels": 8, "dim": (4, 4), "in_bits": 6, "out_bits": 8},
    ]


def unit_grid() -> list[dict]:
    base = dict(device="U250")
    return [
        {
            **base,
            "kind": "pool",
            "function": "MaxPool",
            "channels": 64,
            "pe": 8,
            "kernel": (2, 2),
            "out": (14, 14),
            "bits": 8,
            "out_bits": 8,
        },
        {
            **base,
            "kind": "pool",
            "function": "MaxPool",
            "channels": 16,
            "pe": 16,
            "kernel": (3, 3),
            "out": (7, 7),
            "bits": 4,
            "out_bits": 4,
        },
        {
            **base,
            "kind": "pool",
            "function": "AccPool",
            "channels": 32,
            "pe": 4,
            "kernel": (2, 2),
            "out": (8, 8),
            "bits": 8,
            "out_bits": 10,
            "acc_bits": 10,
        },
        {**base, "kind": "concat", "channels": [32, 64], "simd": 8, "vectors": (8, 8), "bits": 8},
        {**base, "kind": "concat", "channels": [3, 6], "simd": 3, "vectors": (16, 16), "bits": 4},
        {**base, "kind": "globalaccpool", "channels": 64, "pe": 8, "vectors": (7, 7), "bits": 8},
        {**base, "kind": "globalaccpool", "channels": 512, "pe": 1, "vectors": (4, 4), "bits": 4},
        {**base, "kind": "channelwise", "channels": 64, "pe": 4, "vectors": (16, 16), "bits": 8},
        {**base, "kind": "channelwise", "channels": 256, "pe": 2, "vectors": (8, 8), "bits": 4},
        {**base, "kind": "channelwise", "channels": 8, "pe": 8, "vectors": (8, 8), "bits": 9},
        {**base, "kind": "addstreams", "channels": 64, "pe": 4, "vectors": (16, 16), "bits": 8},
        {**base, "kind": "addstreams", "channels": 10, "pe": 5, "vectors": (1,), "bits": 4},
    ]


def mvau_grid() -> list[dict]:
    cases = []
    base = dict(device="U250", vectors=16, a_signed=False, last=False, narrow=False, ram_style="auto", pattern=0)
    shapes = [(64, 288, 8, 32), (32, 27, 4, 3), (10, 256, 10, 16), (128, 1152, 16, 64), (16, 16, 1, 1), (64, 576, 2, 8)]
    bits = [(8, 8), (4, 4), (2, 2), (8, 4), (3, 5), (1, 1)]
    k = 0
    for mh, mw, pe, simd in shapes:
        for wb, ab in bits:
            for out_bits, last in ((4, False), (None, True), (None, False)):
                k += 1
                if k % 3 and not (wb >= 4 and ab >= 4):
                    continue  # fewer narrow cases: they are all HLS
                cases.append(
                    {
                        **base,
                        "mh": mh,
                        "mw": mw,
                        "pe": pe,
                        "simd": simd,
                        "w_bits": max(wb, 2),
                        "a_bits": ab,
                        "out_bits": out_bits,
                        "last": last,
                        "pattern": k,
                    }
                )
    for style in ("distributed", "block", "ultra"):
        for out_bits in (None, 8):
            cases.append(
                {
                    **base,
                    "mh": 64,
                    "mw": 288,
                    "pe": 8,
                    "simd": 32,
                    "w_bits": 8,
                    "a_bits": 8,
                    "out_bits": out_bits,
                    "ram_style": style,
                    "pattern": 3,
                }
            )
    # Signed inputs, DSP48E1 with and without narrow weights, a deep memory, 9-bit signed inputs.
    cases.append(
        {
            **base,
            "mh": 32,
            "mw": 144,
            "pe": 4,
            "simd": 16,
            "w_bits": 8,
            "a_bits": 8,
            "a_signed": True,
            "out_bits": None,
            "last": True,
            "pattern": 5,
        }
    )
    cases.append(
        {
            **base,
            "device": "PYNQ-Z1",
            "mh": 32,
            "mw": 144,
            "pe": 4,
            "simd": 16,
            "w_bits": 8,
            "a_bits": 8,
            "out_bits": None,
            "last": True,
            "narrow": True,
            "pattern": 6,
        }
    )
    cases.append(
        {
            **base,
            "device": "PYNQ-Z1",
            "mh": 32,
            "mw": 144,
            "pe": 4,
            "simd": 16,
            "w_bits": 8,
            "a_bits": 8,
            "out_bits": None,
            "last": True,
            "narrow": False,
            "pattern": 6,
        }
    )
    cases.append({**base, "mh": 512, "mw": 4608, "pe": 2, "simd": 4, "w_bits": 4, "a_bits": 4, "out_bits": None, "pattern": 7})
    cases.append({**base, "mh": 512, "mw": 4608, "pe": 2, "simd": 4, "w_bits": 4, "a_bits": 4, "out_bits": 4, "pattern": 7})
    cases.append(
        {
            **base,
            "mh": 16,
            "mw": 64,
            "pe": 16,
            "simd": 64,
            "w_bits": 8,
            "a_bits": 9,
            "a_signed": True,
            "out_bits": None,
            "last": True,
            "pattern": 8,
        }
    )
    cases.append(
        {**base, "mh": 16, "mw": 64, "pe": 16, "simd": 64, "w_bits": 12, "a_bits": 12, "out_bits": None, "last": True, "pattern": 9}
    )
    cases.append(
        {
            **base,
            "device": "ZCU104",
            "mh": 1000,
            "mw": 512,
            "pe": 8,
            "simd": 32,
            "w_bits": 8,
            "a_bits": 8,
            "out_bits": None,
            "last": True,
            "pattern": 10,
        }
    )
    return cases


def swu_grid() -> list[dict]:
    base = dict(device="U250", a_bits=8, stride=(1, 1), parallel_window=False)
    cases = [
        {**base, "channels": 3, "ifm": (32, 32), "kernel": (3, 3), "simd": 3},
        {**base, "channels": 3, "ifm": (32, 32), "kernel": (3, 3), "simd": 3, "parallel_window": True},
        {**base, "channels": 3, "ifm": (230, 230), "kernel": (7, 7), "stride": (2, 2), "simd": 3},
        {**base, "channels": 3, "ifm": (230, 230), "kernel": (7, 7), "stride": (2, 2), "simd": 3, "parallel_window": True},
        {**base, "channels": 64, "ifm": (58, 58), "kernel": (3, 3), "simd": 8},
        {**base, "channels": 64, "ifm": (58, 58), "kernel": (3, 3), "simd": 64},
        {**base, "channels": 64, "ifm": (58, 58), "kernel": (3, 3), "simd": 64, "parallel_window": True},
        {**base, "channels": 64, "ifm": (57, 57), "kernel": (3, 3), "stride": (2, 2), "simd": 16},
        {**base, "channels": 512, "ifm": (64, 64), "kernel": (3, 3), "simd": 1},
        {**base, "channels": 512, "ifm": (64, 64), "kernel": (3, 3), "simd": 1, "ram_style": "block"},
        {**base, "channels": 512, "ifm": (64, 64), "kernel": (3, 3), "simd": 2, "ram_style": "block"},
        {**base, "channels": 256, "ifm": (30, 30), "kernel": (5, 5), "simd": 4, "ram_style": "block"},
        {**base, "channels": 256, "ifm": (30, 30), "kernel": (5, 5), "simd": 4, "ram_style": "ultra"},
        {**base, "channels": 32, "ifm": (16, 16), "kernel": (3, 3), "simd": 32, "ram_style": "block", "parallel_window": True},
        {**base, "channels": 32, "ifm": (16, 16), "kernel": (3, 3), "simd": 32, "ram_style": "ultra", "parallel_window": True},
        {**base, "channels": 16, "ifm": (28, 28), "kernel": (2, 2), "stride": (2, 2), "simd": 4, "a_bits": 4},
        {**base, "channels": 16, "ifm": (12, 12), "kernel": (5, 5), "simd": 16, "a_bits": 2},
        {**base, "channels": 32, "ifm": (16, 16), "kernel": (3, 3), "simd": 8, "depthwise": True},
        {**base, "channels": 32, "ifm": (17, 17), "kernel": (3, 3), "stride": (2, 2), "simd": 8, "depthwise": True},
        {**base, "channels": 32, "ifm": (16, 16), "kernel": (3, 3), "simd": 8, "depthwise": True, "parallel_window": True},
        # 1x1 kernels with stride 2 (FINN lowers them to an RTL window of its parallel style)
        {**base, "channels": 64, "ifm": (28, 28), "kernel": (1, 1), "stride": (2, 2), "simd": 8},
        {**base, "channels": 256, "ifm": (14, 14), "kernel": (1, 1), "stride": (2, 2), "simd": 256, "a_bits": 4},
    ]
    return cases


def thresholding_grid() -> list[dict]:
    base = dict(device="U250", in_signed=False, pixels=64)
    out = []
    for ch, pe in ((64, 8), (64, 64), (256, 1), (10, 5), (512, 2), (3, 3)):
        for ib, ob in ((8, 4), (16, 8), (12, 2), (24, 1)):
            out.append({**base, "channels": ch, "pe": pe, "in_bits": ib, "thr_bits": ib, "out_bits": ob})
    out.append({**base, "channels": 64, "pe": 4, "in_bits": 9, "thr_bits": 9, "out_bits": 4, "in_signed": True})
    return out


def vvau_grid() -> list[dict]:
    base = dict(device="U250", a_signed=False, last=False, pattern=1)
    out = []
    for ch, k, dim, pe, simd in (
        (32, (3, 3), (16, 16), 4, 1),
        (32, (3, 3), (16, 16), 32, 9),
        (64, (5, 5), (8, 8), 8, 5),
        (128, (3, 3), (7, 7), 2, 3),
    ):
        for wb, ab, ob in ((8, 8, 8), (4, 4, None), (2, 3, 2)):
            out.append(
                {**base, "channels": ch, "kernel": k, "dim": dim, "pe": pe, "simd": simd, "w_bits": wb, "a_bits": ab, "out_bits": ob}
            )
    return out


def main() -> int:
    v010 = _finn_v010(Path(sys.argv[1])) if len(sys.argv) > 1 else None
    units = [{"case": c, "finn": unit_case(c, v010)} for c in unit_grid()]
    data = {
        "_about": (
            "FINN's cost functions on real FINN nodes (finn-plus 1.6.1, default build settings); "
            "written by make_finn_reference.py, compared against qatlab by test_finn_reference.py."
        ),
        "finn": "finn-plus 1.6.1" + ("; AddStreams, ChannelwiseOp: Xilinx FINN v0.10" if v010 else ""),
        "mvau": [{"case": c, "finn": mvau_case(c)} for c in mvau_grid()],
        "swu": [{"case": c, "finn": swu_case(c)} for c in swu_grid()],
        "thresholding": [{"case": c, "finn": thresholding_case(c)} for c in thresholding_grid()],
        "vvau": [{"case": c, "finn": vvau_case(c)} for c in vvau_grid()],
        "units": [u for u in units if u["finn"]],
        "maxpool": [{"case": c, "finn": maxpool_case(c)} for c in maxpool_grid()],
        "padded_conv": [{"case": c, "finn": padded_conv_case(c)} for c in padded_conv_grid()],
        "elementwise_add": [{"case": c, "finn": elementwise_add_case(c)} for c in elementwise_add_grid()],
        "elementwise_mul": [{"case": c, "finn": elementwise_mul_case(c)} for c in elementwise_mul_grid()],
        "lookup": [{"case": c, "finn": lookup_case(c)} for c in lookup_grid()],
    }
    # qatlab.atomic is plain Python: importable from the FINN venv without installing qatlab.
    sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "lib"))
    from qatlab.atomic import write_json

    write_json(OUT, data, indent=1, default=list)
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(v)}" for k, v in data.items() if isinstance(v, list)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
