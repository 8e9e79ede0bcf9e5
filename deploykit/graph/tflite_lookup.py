"""Embedding tables of a float .tflite rewritten from GATHER to EMBEDDING_LOOKUP, so that they can be quantized.

Keras traces a token embedding as GATHER on a constant table. ai-edge-quantizer quantizes tables only behind
EMBEDDING_LOOKUP, the op LiteRT runs on int8 and int4 tables (rows dequantized as they are looked up). The two ops
compute the same rows for axis-0 lookups; EMBEDDING_LOOKUP takes its ids first and only as a 1-D tensor, so n-D ids
are flattened before it and the rows reshaped back after it. The rewrite changes nothing else: the float model gives
the same outputs, bit for bit, before and after.
"""

from __future__ import annotations

import numpy as np


def as_embedding_lookups(model: bytes) -> tuple[bytes, int]:
    """The model with every row lookup in a constant float 2-D table (token, segment or position embeddings) as
    EMBEDDING_LOOKUP, and how many lookups there were."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    rewritten = 0
    for subgraph in graph.subgraphs:
        operators = []
        for op in subgraph.operators:
            if not _is_table_lookup(graph, subgraph, op, schema):
                operators.append(op)
                continue
            ids, rows = op.inputs[1], op.outputs[0]
            id_shape = list(subgraph.tensors[ids].shape)
            if len(id_shape) != 1:  # EMBEDDING_LOOKUP takes 1-D ids: flatten them, and shape the rows back after
                count = int(np.prod(id_shape))
                width = int(subgraph.tensors[op.inputs[0]].shape[1])
                flat_ids = _new_tensor(graph, subgraph, [count], schema.TensorType.INT32,
                                       subgraph.tensors[ids].name + b";flat", schema)
                flat_rows = _new_tensor(graph, subgraph, [count, width], subgraph.tensors[rows].type,
                                        subgraph.tensors[rows].name + b";flat", schema)
                operators.append(_reshape(graph, subgraph, ids, flat_ids, schema))
                ids, rows = flat_ids, flat_rows
            lookup = schema.OperatorT()
            lookup.opcodeIndex = _opcode(graph, schema.BuiltinOperator.EMBEDDING_LOOKUP, schema)
            lookup.inputs, lookup.outputs = [ids, op.inputs[0]], [rows]
            operators.append(lookup)
            if rows != op.outputs[0]:
                operators.append(_reshape(graph, subgraph, rows, op.outputs[0], schema))
            rewritten += 1
        subgraph.operators = operators
    if not rewritten:
        return model, 0
    return bytes(flatbuffer_utils.convert_object_to_bytearray(graph)), rewritten


def _is_table_lookup(graph, subgraph, op, schema) -> bool:
    """GATHER along axis 0 of a constant float 2-D table, by int32 ids of a static shape."""
    code = graph.operatorCodes[op.opcodeIndex]
    if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.GATHER:
        return False
    table, ids = (subgraph.tensors[index] for index in op.inputs[:2])
    options = op.builtinOptions
    shape = list(table.shape) if table.shape is not None else []
    return (table.type == schema.TensorType.FLOAT32 and graph.buffers[table.buffer].data is not None
            and len(shape) == 2 and not (options and (options.axis or options.batchDims))
            and ids.type == schema.TensorType.INT32 and ids.shape is not None and -1 not in list(ids.shape)
            and (ids.shapeSignature is None or -1 not in list(ids.shapeSignature)))


def _opcode(graph, builtin: int, schema) -> int:
    """The index of an op's code in the model, added when the model has none."""
    for index, code in enumerate(graph.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    graph.operatorCodes.append(code)
    return len(graph.operatorCodes) - 1


def _new_tensor(graph, subgraph, shape: list[int], dtype: int, name: bytes, schema, data: bytes | None = None) -> int:
    """A new tensor (constant when `data` is given) in the subgraph, with its own buffer."""
    buffer = schema.BufferT()
    buffer.data = None if data is None else np.frombuffer(data, np.uint8)
    graph.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.name, tensor.buffer = shape, dtype, name, len(graph.buffers) - 1
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def _reshape(graph, subgraph, source: int, target: int, schema):
    """RESHAPE `source` into `target`'s static shape."""
    shape = [int(d) for d in subgraph.tensors[target].shape]
    new_shape = _new_tensor(graph, subgraph, [len(shape)], schema.TensorType.INT32,
                            subgraph.tensors[target].name + b";shape", schema, np.array(shape, np.int32).tobytes())
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(graph, schema.BuiltinOperator.RESHAPE, schema)
    op.inputs, op.outputs = [source, new_shape], [target]
    return op
