"""Sharing identical constant buffers in a TFLite model: one copy of a weight that the graph holds twice.

A decoder whose LM head is tied to its token table computes logits as a product with the transposed table; the
converter folds that transpose into a second constant, equal element for element to the lookup table, so the file
stores the vocabulary twice (on SmolLM2-135M, 113 MB of float32 out of 652 MB). Quantizing both the same way keeps
them byte-identical, and one buffer then serves both tensors.
"""

from __future__ import annotations

import hashlib


def share_identical_buffers(model: bytes) -> tuple[bytes, int]:
    """The model with every tensor pointing at the first of any byte-identical constant buffers, the copies
    emptied; and how many bytes that saved."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    if any(getattr(buffer, "offset", 0) for buffer in graph.buffers):
        # Weights stored after the flatbuffer (ai-edge-quantizer does so for large models): re-serializing would
        # drop them, so such a model is left as it is.
        return model, 0
    first: dict[tuple[int, bytes], int] = {}
    moved: dict[int, int] = {}
    for index, buffer in enumerate(graph.buffers):
        data = getattr(buffer, "data", None)
        if data is None or len(data) == 0:
            continue
        key = (len(data), hashlib.sha256(bytes(data)).digest())
        if key in first:
            moved[index] = first[key]
        else:
            first[key] = index
    if not moved:
        return model, 0
    for subgraph in graph.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = moved.get(tensor.buffer, tensor.buffer)
    saved = 0
    for index in moved:
        saved += len(graph.buffers[index].data)
        graph.buffers[index].data = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(graph)), saved
