"""Canonical form of an ONNX graph: the same computation gives the same bytes.

tf2onnx's output varies from run to run for one SavedModel: node order, which copy of
a merged duplicate survives (and so the names), the operand order of commutative ops.
Hashing every tensor by what computes it (op, attributes, hashes of its inputs, the
bytes of constants) and ordering, naming and sorting by those hashes removes all three,
so artifact sha256s in the manifest repeat across builds.
"""

from __future__ import annotations

import hashlib
import heapq

COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "Mean", "Equal", "And", "Or", "Xor"}


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


def canonicalize(model) -> None:
    """Reorder, rename and sort `model`'s graph in place; graph inputs and outputs keep their names."""
    import onnx

    graph = model.graph
    digests = {value.name: _digest("input", value.name) for value in graph.input}
    for init in graph.initializer:
        unnamed = onnx.TensorProto()
        unnamed.CopyFrom(init)
        unnamed.name = ""
        digests[init.name] = _digest("constant", unnamed.SerializeToString())
    nodes = list(graph.node)  # protobuf hands out new wrappers on each access: hold these
    node_digests = []
    for node in nodes:  # ONNX graphs are stored in topological order
        if node.op_type in COMMUTATIVE:
            node.input[:] = sorted(node.input, key=lambda name: digests.get(name, ""))
        attributes = b"".join(a.SerializeToString() for a in sorted(node.attribute, key=lambda a: a.name))
        own = _digest(node.op_type, node.domain, attributes, *(digests.get(name, "") for name in node.input))
        node_digests.append(own)
        for position, name in enumerate(node.output):
            digests[name] = _digest(own, str(position))
    ordered = [nodes[i] for i in _topological(nodes, node_digests)]
    if len(ordered) != len(nodes):
        raise ValueError("the ONNX graph has a cycle (a tensor name used twice?); it cannot be ordered")
    keep = {value.name for value in [*graph.input, *graph.output]}
    names = {name: name for name in keep}
    for index, node in enumerate(ordered):
        for name in node.input:
            if name and name not in names:
                names[name] = f"const_{len(names)}"
        for position, name in enumerate(node.output):
            names.setdefault(name, f"{node.op_type}_{index}_{position}")
        node.name = f"{node.op_type}_{index}"
        node.input[:] = [names.get(name, name) for name in node.input]
        node.output[:] = [names[name] for name in node.output]
    graph.ClearField("node")
    graph.node.extend(ordered)
    for init in graph.initializer:
        init.name = names.get(init.name, init.name)
    initializers = sorted(graph.initializer, key=lambda init: init.name)
    graph.ClearField("initializer")
    graph.initializer.extend(initializers)
    value_info = sorted((v for v in graph.value_info if v.name in names), key=lambda v: names[v.name])
    for value in value_info:
        value.name = names[value.name]
    graph.ClearField("value_info")
    graph.value_info.extend(value_info)
    _canonical_dimensions(graph)
    graph.doc_string = ""


def _canonical_dimensions(graph) -> None:
    """Symbolic dimensions named by converters ("unk__382") renamed in order of appearance; chosen names stay."""
    renamed: dict[str, str] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param.startswith("unk__"):
                dim.dim_param = renamed.setdefault(dim.dim_param, f"dim_{len(renamed)}")


def _topological(nodes: list, digests: list[str]) -> list[int]:
    """Kahn's order over node indices, always taking the ready node with the smallest digest."""
    producer = {name: index for index, node in enumerate(nodes) for name in node.output}
    waiting = [{producer[name] for name in node.input if name in producer} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for index, inputs in enumerate(waiting):
        for source in inputs:
            consumers.setdefault(source, []).append(index)
    ready = [(digests[index], index) for index, inputs in enumerate(waiting) if not inputs]
    heapq.heapify(ready)
    ordered = []
    while ready:
        _, index = heapq.heappop(ready)
        ordered.append(index)
        for consumer in consumers.get(index, []):
            waiting[consumer].discard(index)
            if not waiting[consumer]:
                heapq.heappush(ready, (digests[consumer], consumer))
    return ordered
