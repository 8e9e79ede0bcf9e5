"""ONNX models as input: post-training paths only (OpenVINO, TensorRT), no Keras graph to train.

An ONNX encoder exported by another tool names its inputs its own way (`input_ids`,
`attention_mask`, `token_type_ids`, int64, dynamic axes). deploykit wraps it once in
an adapter graph with its own contract: int32 `token_ids` and `padding_mask` of shape
[1, sequence length], segment ids all zero, so validation, profiling and every
exporter feed it exactly as they feed a converted Keras model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deploykit.errors import DeployKitError

# deploykit's input -> the names exporters commonly give it (Hugging Face/optimum, keras-hub, TF hub)
INPUT_ROLES = {
    "token_ids": ("token_ids", "input_ids", "input_word_ids"),
    "padding_mask": ("padding_mask", "attention_mask", "input_mask"),
    "segment_ids": ("segment_ids", "token_type_ids", "input_type_ids"),
}
DEFAULT_MAX_LENGTH = 512  # BERT-family position tables; a static input length overrides it


def input_roles(model) -> dict[str, str]:
    """deploykit role -> the ONNX model's input name, failing clearly on inputs it cannot feed."""
    roles = {}
    for graph_input in model.graph.input:
        role = next((r for r, names in INPUT_ROLES.items() if graph_input.name.split(":")[0] in names), None)
        if role is None:
            known = ", ".join(n for names in INPUT_ROLES.values() for n in names)
            raise DeployKitError(
                f"the ONNX model has an input {graph_input.name!r} deploykit cannot feed; it feeds inputs named "
                f"{known}. Re-export the model with those inputs."
            )
        roles[role] = graph_input.name
    if "token_ids" not in roles:
        raise DeployKitError("the ONNX model has no token-id input (input_ids or token_ids); re-export it with one.")
    return roles


def describe(path: Path) -> dict:
    """What deploykit needs to know about an ONNX text model: its inputs, output rank and width, size."""
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises several unrelated types for unreadable files
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DeployKitError(f"{path} is not a valid ONNX model ({first[:200]}); re-export it.") from error
    roles = input_roles(model)
    output = model.graph.output[0]
    dims = output.type.tensor_type.shape.dim
    if len(dims) != 2:
        raise DeployKitError(
            f"{path}: deploykit needs one pooled output [batch, features] (a sentence embedding or logits); "
            f"{output.name!r} has rank {len(dims)}. Export the model with its pooling head."
        )
    token_ids = next(value for value in model.graph.input if value.name == roles["token_ids"])
    token_dims = token_ids.type.tensor_type.shape.dim
    length = token_dims[1].dim_value if len(token_dims) == 2 else 0
    return {
        "roles": roles,
        "output": output.name,
        "width": dims[1].dim_value or None,
        "max_sequence_length": length or DEFAULT_MAX_LENGTH,
        "parameters": int(sum(np.prod(init.dims) for init in model.graph.initializer)),
    }


def write_static_graph(source: Path, sequence_length: int, output: Path) -> Path:
    """The model behind deploykit's input contract, with static [1, sequence_length] shapes."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.graph.onnx_canonical import canonicalize

    model = onnx.load(str(source))
    graph = model.graph
    roles = input_roles(model)
    original = {value.name: value for value in graph.input}
    fixed = [d.dim_value for d in original[roles["token_ids"]].type.tensor_type.shape.dim[1:]]
    if fixed and fixed[0] and fixed[0] != sequence_length:
        raise DeployKitError(
            f"{source}'s inputs are fixed at {fixed[0]} tokens; pass --sequence-length {fixed[0]} "
            "(or export the model with a dynamic sequence axis)."
        )
    shape = [1, sequence_length]
    taken = {name for node in graph.node for name in node.output} & {"token_ids", "padding_mask"}
    for node in graph.node:  # an inner tensor may already carry a name the adapter's inputs take
        node.input[:] = [f"inner_{i}" if i in taken else i for i in node.input]
        node.output[:] = [f"inner_{o}" if o in taken else o for o in node.output]
    nodes, inputs = [], []
    for role in ("token_ids", "padding_mask"):
        inputs.append(helper.make_tensor_value_info(role, TensorProto.INT32, shape))
    for role, name in roles.items():
        wanted = original[name].type.tensor_type.elem_type
        renamed = f"deploykit_{role}"
        if role == "segment_ids":
            graph.initializer.append(helper.make_tensor(renamed, wanted, shape, [0] * sequence_length))
        else:
            nodes.append(helper.make_node("Cast", [role], [renamed], to=wanted))
        for node in graph.node:
            node.input[:] = [renamed if i == name else i for i in node.input]
    if "padding_mask" not in roles:
        inputs = inputs[:1]
    graph.ClearField("input")
    graph.input.extend(inputs)
    nodes.extend(graph.node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    output_value = graph.output[0]
    output_value.type.tensor_type.shape.dim[0].dim_value = 1
    graph.ClearField("value_info")  # stale dynamic shapes; recomputed below
    model = onnx.shape_inference.infer_shapes(model)
    canonicalize(model)
    onnx.checker.check_model(model)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    return output


def run_graph(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Outputs of a static-shape graph from `write_static_graph`, one example at a time."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    count = len(next(iter(inputs.values())))
    return np.concatenate([session.run(None, {n: inputs[n][i:i + 1] for n in names})[0] for i in range(count)])
