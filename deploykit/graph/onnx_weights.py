"""Weight-only int8 in ONNX: constant weight matrices stored as int8 behind a DequantizeLinear.

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
        peak = np.abs(weights).max(axis=1 - axis)
        scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
        shape = (1, -1) if axis == 1 else (-1, 1)
        levels = np.clip(np.rint(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.extend([numpy_helper.from_array(levels, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale"),
                                  numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{name}_zero")])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                           [f"{name}_dequantized"], name=f"{name}_dequantize", axis=axis))
        saved += weights.nbytes - levels.nbytes - 5 * scale.size
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
