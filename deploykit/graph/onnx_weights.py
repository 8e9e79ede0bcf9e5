"""Weight-only int8 and int4 in ONNX: constant weight matrices stored as integers behind a DequantizeLinear.

Every weight matrix a MatMul multiplies by (its second input) and every table a Gather reads rows from is stored
as int8 with one symmetric scale per output channel (a MatMul's columns, a table's rows) and zero point 0, the
only form TensorRT's IDequantizeLayer takes. TensorRT fuses such a DequantizeLinear into the GEMM that reads it
(weight-only quantization: int8 storage, float arithmetic), and onnxruntime runs the same graph as written, so
the artifact validated here is the one the engine is built from. Activations are left alone: a decoder's step is
bound by reading its weights.
"""

from __future__ import annotations

import numpy as np

# Narrower weights are statistics (norm scales, biases), not matrices worth int8.
MIN_QUANTIZED_DIM = 16
# Which input of which op is a weight matrix, and the axis its channels run along (one scale per channel).
WEIGHT_INPUTS = {("MatMul", 1): 1, ("Gather", 0): 0}


def weight_only_int8(model) -> int:
    """Rewrite `model` (an onnx ModelProto) in place; returns how many weight bytes it saved."""
    return _rewrite(model, lambda name, weights, axis: _per_channel_int8(name, weights, axis))


def weight_only_int4(model, group_size: int = 128) -> int:
    """MatMul weights as int4 in blocks of `group_size` input channels, one symmetric scale per block and output
    channel (DequantizeLinear's block_size, ONNX opset 21: TensorRT 10's int4 weight-only GEMM takes this form);
    token tables, and matrices whose input size is no multiple of `group_size`, int8 per channel as in
    `weight_only_int8` (NNCF keeps embeddings at int8 too). The model must already be opset 21 or later."""
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < INT4_OPSET:
        raise ValueError(f"int4 blocks need ONNX opset {INT4_OPSET}; the model is opset {opset}")

    def quantize(name: str, weights: np.ndarray, axis: int):
        if axis == 1 and weights.shape[0] % group_size == 0:
            return _blockwise_int4(name, weights, group_size)
        return _per_channel_int8(name, weights, axis)

    return _rewrite(model, quantize)


INT4_OPSET = 21


def _rewrite(model, quantize) -> int:
    """Put every weight input behind a DequantizeLinear that `quantize(name, float weights, channel axis)` makes:
    it returns (initializers, node attributes, bytes stored)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    axes: dict[str, int] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            axis = WEIGHT_INPUTS.get((node.op_type, position))
            init = initializers.get(name)
            if (axis is not None and init is not None and init.data_type == TensorProto.FLOAT and len(init.dims) == 2
                    and min(init.dims) >= MIN_QUANTIZED_DIM):
                axes.setdefault(name, axis)
    dequantize, saved = [], 0
    for name, axis in axes.items():
        weights = numpy_helper.to_array(initializers[name]).astype(np.float32)
        tensors, attributes, stored = quantize(name, weights, axis)
        graph.initializer.extend(tensors)
        dequantize.append(helper.make_node("DequantizeLinear", [tensor.name for tensor in tensors],
                                           [f"{name}_dequantized"], name=f"{name}_dequantize", **attributes))
        saved += weights.nbytes - stored
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name in axes:
                node.input[position] = f"{name}_dequantized"
    kept = [init for init in graph.initializer if init.name not in axes]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)
    nodes = dequantize + list(graph.node)  # the dequantizations read only constants: first is a topological order
    graph.ClearField("node")
    graph.node.extend(nodes)
    return saved


def _per_channel_int8(name: str, weights: np.ndarray, axis: int):
    from onnx import numpy_helper

    peak = np.abs(weights).max(axis=1 - axis)
    scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
    shape = (1, -1) if axis == 1 else (-1, 1)
    levels = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
    tensors = [numpy_helper.from_array(levels, f"{name}_int8"), numpy_helper.from_array(scale, f"{name}_scale"),
               numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero")]
    return tensors, {"axis": axis}, levels.nbytes + 5 * scale.size


def _blockwise_int4(name: str, weights: np.ndarray, group_size: int):
    """A MatMul weight [inputs, outputs] in blocks of `group_size` inputs: levels -7..7 (symmetric, zero point 0)."""
    from onnx import numpy_helper

    inputs, outputs = weights.shape
    blocks = weights.reshape(inputs // group_size, group_size, outputs)
    peak = np.abs(blocks).max(axis=1)
    scale = np.where(peak > 0, peak / 7, 1.0).astype(np.float32)  # [inputs / group_size, outputs]
    levels = np.clip(np.rint(blocks / scale[:, None, :]), -7, 7).astype(np.int8).reshape(inputs, outputs)
    tensors = [_int4_tensor(f"{name}_int4", levels), numpy_helper.from_array(scale, f"{name}_scale"),
               _int4_tensor(f"{name}_zero", np.zeros(scale.shape, np.int8))]
    return tensors, {"axis": 0, "block_size": group_size}, levels.size // 2 + 4 * scale.size + scale.size // 2


def _int4_tensor(name: str, values: np.ndarray):
    """An ONNX INT4 initializer: two values a byte, the first in the low nibble (packed here: onnx's own packing
    takes a Python list, which for a decoder's weights is hundreds of millions of objects)."""
    from onnx import TensorProto, helper

    nibbles = (values.ravel().astype(np.int8) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, values.shape, packed.tobytes(), raw=True)
