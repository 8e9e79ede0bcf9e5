"""Property-based: whatever bytes a data file or a target file holds, deploykit returns a valid object or a
DeployKitError (a one-line message), never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploykit.data import TextDataset, load_dataset
from deploykit.errors import DeployKitError
from deploykit.targets import Target
from deploykit.target_loader import load_target_file

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
rows = st.dictionaries(st.sampled_from(["text", "label", "other"]) | st.text(max_size=5), json_values, max_size=4)


def _load(name: str, content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        return load_dataset(path)


def _outcome(call):
    try:
        return call()
    except DeployKitError as error:
        assert "\n" not in str(error)
        return error


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(["d.jsonl", "d.csv"]))
def test_any_bytes_give_a_dataset_or_a_clear_error(content, name):
    result = _outcome(lambda: _load(name, content))
    if isinstance(result, TextDataset):
        assert len(result) >= 2 and all(isinstance(text, str) and text.strip() for text in result.texts)


@SETTINGS
@given(st.lists(rows, min_size=0, max_size=6))
def test_any_json_lines_give_a_dataset_or_a_clear_error(objects):
    import json

    content = "".join(json.dumps(row) + "\n" for row in objects).encode("utf-8")
    result = _outcome(lambda: _load("d.jsonl", content))
    if isinstance(result, TextDataset):
        assert all(isinstance(text, str) for text in result.texts)
        assert result.labels is None or all(isinstance(label, (str, int)) for label in result.labels)


target_fields = st.sampled_from([
    "name", "description", "device", "runtime", "precisions", "integer_only", "integer_io", "static_shapes",
    "sequence_range", "sparsity", "supported_ops", "unsupported_ops", "max_tensor_dims", "memory_mb", "threads",
    "host_match", "profiling", "budgets", "compiler", "recipes",
]) | st.text(max_size=6)
target_values = json_values | st.sampled_from(["litert", "openvino", "tensorrt", "int8", "fp16", "[", "(x", "local"]) | \
    st.lists(st.sampled_from(["int8", "fp16", "fp32", "a16w8", "dynamic-int8", "none", "2:4", "prune", "qat"]), max_size=3) | \
    st.fixed_dictionaries({"name": st.sampled_from(["edgetpu", "tensorrt", "litert-aot", "x.y", ""])}, optional={
        "vendor": st.sampled_from(["qualcomm", "acme"]), "soc_model": st.text(max_size=8), "timeout_s": json_scalars})
documents = st.dictionaries(target_fields, target_values, max_size=8)


def _load_target(content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.yaml"
        path.write_bytes(content)
        return load_target_file(path)


@SETTINGS
@given(documents)
def test_any_yaml_mapping_gives_a_target_or_a_clear_error(document):
    required = {"description": "d", "device": "d", "runtime": "litert", "precisions": ["int8"]}
    for candidate in (document, {**required, **document}):
        content = yaml.safe_dump(candidate, allow_unicode=True).encode("utf-8")
        result = _outcome(lambda: _load_target(content))
        assert isinstance(result, (Target, DeployKitError))


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda text: text.encode("utf-8")))
def test_any_bytes_give_a_target_or_a_clear_error(content):
    assert isinstance(_outcome(lambda: _load_target(content)), (Target, DeployKitError))


# ---- readers of files that may come from elsewhere: a build folder, a profile, a devices or recipe file ----------

json_documents = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["files", "path", "bytes", "sha256", "artifact", "target_profile", "name", "host_match",
                     "candidates", "candidate", "precision", "measurements", "devices", "passes", "pass", "address",
                     "threads", "sequence_length", "vocabulary", "special_tokens", "runtime_config"]) | st.text(max_size=6),
    inner, max_size=4), max_leaves=12)


def _folder_with(files: dict[str, bytes]) -> Path:
    folder = Path(tempfile.mkdtemp())
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


@SETTINGS
@given(json_documents | st.text(max_size=200))
def test_any_manifest_gives_a_verdict_never_an_exception(document):
    from deploykit.verify import verify_folder

    content = document.encode() if isinstance(document, str) else json.dumps(document).encode()
    check = verify_folder(_folder_with({"manifest.json": content, "model.tflite": b"x"}))
    assert not check.passed and all("\n" not in line for line in check.lines())


@SETTINGS
@given(json_documents, json_documents)
def test_any_report_or_tokenizer_json_gives_an_artifact_or_a_clear_error(report, tokenizer):
    from deploykit.profiling.build_folder import build_target_of, folder_artifact

    folder = _folder_with({"report.json": json.dumps(report).encode(), "tokenizer.json": json.dumps(tokenizer).encode(),
                           "model.tflite": b"x", "vocab.txt": b"[UNK]\n[CLS]\n[SEP]\n"})
    for read in (folder_artifact, build_target_of):
        _outcome(lambda: read(folder))


@SETTINGS
@given(json_documents)
def test_any_previous_report_gives_a_diff_that_renders(previous):
    from deploykit.report.diff import report_diff
    from deploykit.report.markdown import _previous_lines

    current = {"artifact": {"sha256": "a" * 64, "candidate": "int8", "bytes": 10}, "metrics": {"accuracy": 0.9}}
    lines = _previous_lines(report_diff(previous if isinstance(previous, dict) else {}, current))
    assert all(isinstance(line, str) for line in lines)


@SETTINGS
@given(json_documents | st.text(max_size=200))
def test_any_devices_file_gives_devices_or_a_clear_error(document):
    from deploykit.profiling.devices import read_devices

    content = document if isinstance(document, str) else yaml.safe_dump(document, allow_unicode=True)
    folder = _folder_with({"devices.yaml": content.encode("utf-8", "surrogatepass")})
    result = _outcome(lambda: read_devices(folder / "devices.yaml"))
    assert isinstance(result, (dict, DeployKitError))


@SETTINGS
@given(json_documents, st.sampled_from(["recipe.yaml", "recipe.json"]))
def test_any_recipe_file_gives_a_recipe_or_a_clear_error(document, name):
    from deploykit.passes.recipe import RecipeSpec, read_recipe

    content = json.dumps(document) if name.endswith(".json") else yaml.safe_dump(document, allow_unicode=True)
    folder = _folder_with({name: content.encode("utf-8", "surrogatepass")})
    assert isinstance(_outcome(lambda: read_recipe(str(folder / name))), (RecipeSpec, DeployKitError))


@SETTINGS
@given(json_documents)
def test_any_profile_gives_a_latency_model_or_a_clear_error(document):
    from deploykit.latency_model import LatencyModel, load_latency_model

    folder = _folder_with({})
    (folder / "arm-cpu").mkdir()
    (folder / "arm-cpu" / "pi.json").write_text(json.dumps(document))
    assert isinstance(_outcome(lambda: load_latency_model(folder, "arm-cpu", "pi")), (LatencyModel, DeployKitError,
                                                                                     type(None)))
