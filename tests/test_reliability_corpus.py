"""A corpus of bad inputs, each given to the CLI as a user would.

Every case must end with exit code 2, exactly one `error:` line that contains the
expected words (the problem, and where the fix is not obvious, the fix), no
traceback, and an output folder byte-for-byte as it was: it holds an earlier
deploykit build and a file of the user's, and neither may change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

from deploykit.cli import main
from deploykit.report.manifest import write_manifest

ROWS = "".join(json.dumps({"text": f"sentence number {i}", "label": ["food", "sports"][i % 2]}) + "\n"
               for i in range(20))


@dataclass
class Fixtures:
    tmp: Path
    classifier: Path
    backbone: Path
    data: Path
    out: Path

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def targets(self, files: dict[str, str], folder: str = "targets") -> dict:
        """A DEPLOYKIT_TARGETS folder holding `files`."""
        for name, content in files.items():
            self.file(f"{folder}/{name}", content)
        return {"DEPLOYKIT_TARGETS": str(self.tmp / folder)}

    def hf_folder(self, config: str, name: str = "hf", modules: str | None = None, pooling: str | None = None) -> str:
        """A Hugging Face folder with `config` (and a sentence-transformers modules.json, Pooling config)."""
        if modules is not None:
            self.file(f"{name}/modules.json", modules)
        if pooling is not None:
            self.file(f"{name}/1_Pooling/config.json", pooling)
        return str(Path(self.file(f"{name}/config.json", config)).parent)

    def build(self, *args: str, model: str | None = None, data: str | None = None) -> list[str]:
        return ["build", *([model] if model else []), "--data", data or str(self.data), "--out", str(self.out),
                "--runs", "2", "--warmup", "0", *args]


@dataclass
class Case:
    id: str
    setup: Callable[[Fixtures], list[str] | tuple[list[str], dict]]
    message: str


LIST_TARGET = "description: d\ndevice: d\nruntime: litert\nprecisions: [dynamic-int8]\n"

CASES = [
    # --- data files -------------------------------------------------------------------------------
    Case("data-latin1", lambda f: f.build(data=f.file("d.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1") * 2)),
         "line 1 is not UTF-8"),
    Case("data-utf16", lambda f: f.build(data=f.file("d.csv", "text\nhello\nworld\n".encode("utf-16"))), "not UTF-8"),
    Case("data-null-text", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a"}\n{"text": null}\n')),
         "line 2 has null as 'text'"),
    Case("data-number-text", lambda f: f.build(data=f.file("d.jsonl", '{"text": 42}\n{"text": "b"}\n')),
         "line 1 has a number as 'text'"),
    Case("data-list-text", lambda f: f.build(data=f.file("d.jsonl", '{"text": ["a"]}\n{"text": "b"}\n')),
         "an array as 'text'"),
    Case("data-no-text", lambda f: f.build(data=f.file("d.jsonl", '{"sentence": "a"}\n{"text": "b"}\n')),
         "no 'text' column"),
    Case("data-blank-text", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a"}\n{"text": "   "}\n')),
         "line 2 has an empty 'text'"),
    Case("data-not-json", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a"}\n{text: b}\n')),
         "line 2 is not JSON"),
    Case("data-json-array", lambda f: f.build(data=f.file("d.jsonl", '["a", "b"]\n')), "not a JSON object"),
    Case("data-deep-json", lambda f: f.build(data=f.file("d.jsonl", "[" * 100_000 + "]" * 100_000 + "\n")),
         "nests JSON too deeply"),
    Case("data-empty", lambda f: f.build(data=f.file("d.jsonl", "")), "has no rows"),
    Case("data-one-row", lambda f: f.build(data=f.file("d.jsonl", '{"text": "only"}\n')), "at least 2 texts"),
    Case("data-some-labels", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')),
         "label every row or none"),
    Case("data-list-label", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a", "label": [1]}\n{"text": "b", "label": 1}\n')),
         "a label is a class name"),
    Case("data-fraction-label", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": 1}\n')),
         "line 1 has the label 0.5"),
    Case("data-csv-no-header", lambda f: f.build(data=f.file("d.csv", "sentence\na\nb\n")), "needs a header with a 'text'"),
    Case("data-csv-short-row", lambda f: f.build(data=f.file("d.csv", "label,text\n1,a\n2\n")), "line 3 has null as 'text'"),
    Case("data-suffix", lambda f: f.build(data=f.file("d.txt", "a\nb\n")), "has suffix '.txt'"),
    Case("data-missing", lambda f: f.build(data=str(f.tmp / "nope.jsonl")), "does not exist"),
    Case("data-surrogate", lambda f: f.build(data=f.file("d.jsonl", '{"text": "a\\ud800"}\n{"text": "b"}\n')),
         "unpaired surrogate"),
    Case("data-superscript-label",
         lambda f: f.build(model=str(f.classifier), data=f.file("d.jsonl", ROWS.replace('"food"', '"\\u00b2"'))),
         "not among the model's class names"),
    Case("data-label-index-out-of-range",
         lambda f: f.build(model=str(f.classifier), data=f.file("d.jsonl", ROWS.replace('"food"', "7").replace('"sports"', "0"))),
         "the model has 2 outputs"),
    Case("data-bad-eval-file",
         lambda f: f.build("--eval-data", f.file("e.jsonl", '{"text": 1}\n{"text": "b"}\n')), "a number as 'text'"),
    Case("data-markup-in-path", lambda f: f.build(data=str(f.tmp / "[/x][red]d.jsonl")), "[/x][red]d.jsonl"),
    # --- models ---------------------------------------------------------------------------------------
    Case("model-missing", lambda f: f.build(model=str(f.tmp / "nope")), "does not exist"),
    Case("model-garbage-keras", lambda f: f.build(model=f.file("m.keras", b"garbage")), "could not load"),
    Case("model-unknown-folder", lambda f: f.build(model=str(Path(f.file("folder/readme.md", "x")).parent)),
         "cannot tell what kind of model"),
    Case("model-preset-named-folder", lambda f: f.build(model=str(Path(f.file("bert_tiny_en_uncased/x.txt", "x")).parent)),
         "cannot tell what kind of model"),
    Case("model-config-not-json", lambda f: f.build(model=f.hf_folder("{not json")), "config.json is not valid JSON"),
    Case("model-config-a-list", lambda f: f.build(model=f.hf_folder("[1, 2]")), "must hold a JSON object"),
    Case("model-config-not-utf8", lambda f: f.build(model=str(Path(f.file("hf/config.json", b"\xff\xfe{}")).parent)),
         "is not UTF-8"),
    Case("model-not-bert", lambda f: f.build(model=f.hf_folder('{"model_type": "t5"}')), "is not BERT-family"),
    Case("decoder-without-tokenizer", lambda f: f.build(model=f.hf_folder('{"model_type": "gpt2"}')),
         "has no tokenizer.json"),
    Case("model-hf-classifier", lambda f: f.build(model=f.hf_folder('{"architectures": ["BertForSequenceClassification"]}')),
         "classification heads are not loaded yet"),
    Case("model-architectures-not-a-list", lambda f: f.build(model=f.hf_folder('{"architectures": 5}')),
         "'architectures' must be a list"),
    Case("model-sentence-transformers-dense",
         lambda f: f.build(model=f.hf_folder('{"model_type": "bert"}', modules='[{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Dense", "path": "2_Dense"}]')),
         "the module 'sentence_transformers.models.Dense' is not supported"),
    Case("model-sentence-transformers-max-pooling",
         lambda f: f.build(model=f.hf_folder('{"model_type": "bert"}', modules='[{"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"}]',
                                             pooling='{"pooling_mode_max_tokens": true, "pooling_mode_mean_tokens": false}')),
         "pooling pooling_mode_max_tokens is not supported"),
    Case("model-tokenizer-json-bpe",
         lambda f: f.build("--tokenizer", f.file("t/tokenizer.json", '{"model": {"type": "BPE", "vocab": {"a": 0}}}'),
                           model=str(f.backbone)), "holds a BPE tokenizer"),
    Case("model-hf-without-weights", lambda f: f.build(model=f.hf_folder('{"model_type": "bert"}')),
         "could not load"),
    Case("model-no-vocabulary", lambda f: f.build(model=_copy(f.backbone, f.tmp / "alone" / "encoder.keras")),
         "carries no tokenizer"),
    Case("model-vocabulary-not-utf8",
         lambda f: f.build("--tokenizer", f.file("v/vocab.txt", b"\xff\xfe\x00"), model=str(f.backbone)), "not UTF-8"),
    Case("model-labels-not-utf8",
         lambda f: f.build(model=_copy(f.classifier, f.tmp / "c" / "classifier.keras", labels=b"\xff\n")), "not UTF-8"),
    Case("model-garbage-onnx", lambda f: f.build("--target", "intel-cpu", model=f.file("m.onnx", b"garbage")), "m.onnx"),
    Case("model-recipe-needs-bert", lambda f: f.build("--target", "arm-cpu", "--recipe", "distill",
                                                      model=f.file("m.onnx", b"garbage")),
         "needs a Keras or TensorFlow model"),
    # --- target files ------------------------------------------------------------------------------
    Case("target-yaml-syntax", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": "runtime: [litert\n"})),
         "not readable YAML"),
    Case("target-yaml-list", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": "- a\n- b\n"})),
         "must hold a mapping"),
    Case("target-name-mismatch", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": "name: other\n" + LIST_TARGET})),
         "must match the file name"),
    Case("target-unknown-field", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": LIST_TARGET + "speed: 9\n"})),
         "speed: Extra inputs"),
    Case("target-bad-runtime", lambda f: (f.build("--target", "lab"),
                                          f.targets({"lab.yaml": LIST_TARGET.replace("litert", "coreml")})), "runtime"),
    Case("target-bad-regex", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": LIST_TARGET + "host_match: '(x'\n"})),
         "not a valid regular expression"),
    Case("target-bad-recipe", lambda f: (f.build("--target", "lab"),
                                         f.targets({"lab.yaml": LIST_TARGET + "recipes: ['prune:heads=abc']\n"})),
         "heads must be a number"),
    Case("target-unknown-compiler", lambda f: (f.build("--target", "lab"),
                                               f.targets({"lab.yaml": LIST_TARGET + "compiler: {name: vela}\n"})),
         "unknown device compiler 'vela'"),
    Case("target-compiler-path-name", lambda f: (f.build("--target", "lab"),
                                                 f.targets({"lab.yaml": LIST_TARGET + "compiler: {name: ../../x.y}\n"})),
         "compiler block needs a name"),
    Case("target-hostile-soc", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": LIST_TARGET +
          "compiler: {name: litert-aot, vendor: qualcomm, soc_model: '\"\"\"; import os; os.system(\"id\") #'}\n"})),
         "soc_model"),
    Case("target-bad-file-name", lambda f: (f.build("--target", "Lab_Board"), f.targets({"Lab_Board.yaml": LIST_TARGET})),
         "target names are lowercase"),
    Case("target-yml-and-yaml", lambda f: (f.build("--target", "lab"),
                                           f.targets({"lab.yaml": LIST_TARGET, "lab.yml": LIST_TARGET})), "defined twice"),
    Case("target-two-folders", lambda f: (f.build("--target", "lab"), {"DEPLOYKIT_TARGETS": ":".join(
        f.targets({"lab.yaml": LIST_TARGET}, folder)["DEPLOYKIT_TARGETS"] for folder in ("t1", "t2"))}), "defined twice"),
    Case("target-not-utf8", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": "description: \xe9\n".encode("latin-1")})),
         "not UTF-8"),
    Case("target-folder-missing", lambda f: (f.build("--target", "lab"), {"DEPLOYKIT_TARGETS": str(f.tmp / "nowhere")}),
         "not a folder"),
    Case("device-unknown-scheme", lambda f: (f.build("--target", "arm-cpu", "--device", "telnet://pi@lab"), {}),
         "deploykit reaches devices over ssh:// and adb://"),
    Case("device-ssh-with-path", lambda f: (f.build("--target", "arm-cpu", "--device", "ssh://pi@lab/tmp"), {}),
         "is not an SSH address"),
    Case("device-query-unknown-field", lambda f: (f.build("--target", "arm-cpu", "--device", "ssh://pi@lab?pyton=x"), {}),
         "pyton: Extra inputs are not permitted"),
    Case("device-name-not-in-file", lambda f: (f.build("--target", "arm-cpu", "--device", "lab-pi5", "--devices", f.file(
        "devices.yaml", "devices:\n  other: {address: 'ssh://pi@10.0.0.5'}\n")), {}), "names no device 'lab-pi5'"),
    Case("devices-file-not-yaml", lambda f: (f.build("--target", "arm-cpu", "--device", "lab", "--devices", f.file(
        "devices.yaml", "devices: [unclosed\n")), {}), "is not readable YAML"),
    Case("device-for-another-target", lambda f: (f.build("--target", "intel-cpu", "--device", "pi", "--devices", f.file(
        "devices.yaml", "devices:\n  pi: {address: 'ssh://pi@10.0.0.5', target: arm-cpu}\n")), {}),
         "device 'pi' belongs to target arm-cpu, not intel-cpu"),
    Case("device-and-runner", lambda f: (f.build("--target", "arm-cpu", "--device", "ssh://pi@lab", "--runner", "local"),
                                          {}), "--runner and --device both say where to profile"),
    Case("target-unknown-runner", lambda f: (f.build("--target", "lab"),
                                              f.targets({"lab.yaml": LIST_TARGET + "profiling: telnet\n"})),
         "unknown profiling runner 'telnet'"),
    Case("target-ssh-runner-without-host", lambda f: (f.build("--target", "lab"),
                                                       f.targets({"lab.yaml": LIST_TARGET + "profiling: ssh\n"})),
         "profiling runner 'ssh' settings are invalid: host: Field required"),
    Case("target-integer-only-fp32", lambda f: (f.build("--target", "lab"), f.targets(
        {"lab.yaml": LIST_TARGET.replace("[dynamic-int8]", "[fp32]") + "integer_only: true\n"})), "integer_only"),
    Case("target-range-on-litert", lambda f: (f.build("--target", "lab"),
                                              f.targets({"lab.yaml": LIST_TARGET + "sequence_range: [8, 64]\n"})),
         "sequence_range"),
    Case("target-no-exportable-precision", lambda f: (f.build("--target", "lab"), f.targets(
        {"lab.yaml": LIST_TARGET.replace("[dynamic-int8]", "[fp8]")})), "none of which"),
    Case("target-second-of-two-invalid", lambda f: (f.build("--target", "arm-cpu,lab"),
                                                    f.targets({"lab.yaml": LIST_TARGET + "host_match: '['\n"})),
         "not a valid regular expression"),
    Case("target-unknown", lambda f: f.build("--target", "arm-cpux"), "Did you mean arm-cpu"),
    Case("target-empty-list", lambda f: f.build("--target", " , "), "no target given"),
    # --- command-line options ------------------------------------------------------------------------
    Case("option-negative-seed", lambda f: f.build("--seed", "-1"), "'--seed': -1 is not in the range"),
    Case("option-zero-calibration", lambda f: f.build("--calibration-samples", "0"), "--calibration-samples"),
    Case("option-zero-evaluation", lambda f: f.build("--evaluation-samples", "0"), "--evaluation-samples"),
    Case("option-percentile-low", lambda f: f.build("--activation-percentile", "10"), "--activation-percentile"),
    Case("option-length-percentile", lambda f: f.build("--length-percentile", "0"), "--length-percentile"),
    Case("option-sequence-length", lambda f: f.build("--sequence-length", "1"), "--sequence-length"),
    Case("option-negative-drop", lambda f: f.build("--max-accuracy-drop", "-1"), "--max-accuracy-drop"),
    Case("option-nan-drop", lambda f: f.build("--max-accuracy-drop", "nan"), "max accuracy drop must be"),
    Case("option-cosine-above-one", lambda f: f.build("--min-cosine", "2"), "--min-cosine"),
    Case("option-agreement", lambda f: f.build("--min-agreement", "1.5"), "--min-agreement"),
    Case("option-zero-latency", lambda f: f.build("--max-latency-ms", "0"), "--max-latency-ms"),
    Case("option-positive-masked-logit", lambda f: f.build("--masked-logit", "5"), "--masked-logit"),
    Case("option-residual-scale", lambda f: f.build("--max-residual-scale", "0.5"), "--max-residual-scale"),
    Case("option-zero-runs", lambda f: f.build("--runs", "0"), "--runs"),
    Case("option-negative-warmup", lambda f: f.build("--warmup", "-1"), "--warmup"),
    Case("option-zero-threads", lambda f: f.build("--threads", "0"), "--threads"),
    Case("option-zero-timeout", lambda f: f.build("--profile-timeout", "0"), "--profile-timeout"),
    Case("option-not-a-number", lambda f: f.build("--min-cosine", "high"), "'high' is not a valid float"),
    Case("option-unknown", lambda f: f.build("--quantise"), "No such option"),
    Case("option-bad-task", lambda f: f.build("--task", "ner"), "--task"),
    Case("option-unknown-precision", lambda f: f.build("--precision", "int3"), "int3"),
    Case("option-precision-off-target", lambda f: f.build("--target", "mobile-npu", "--precision", "fp32"),
         "integer-only graphs"),
    Case("recipe-word-for-number", lambda f: f.build("--recipe", "prune:heads=abc"), "heads must be a number"),
    Case("recipe-fraction-for-count", lambda f: f.build("--recipe", "distill:layers=2.5"), "layers must be an integer"),
    Case("recipe-unknown-pass", lambda f: f.build("--recipe", "sparsify"), "unknown pass 'sparsify'"),
    Case("recipe-order", lambda f: f.build("--recipe", "qat,distill"), "must be the last pass"),
    Case("recipe-empty", lambda f: f.build("--recipe", " , "), "--recipe is empty"),
    Case("recipe-unknown-parameter", lambda f: f.build("--recipe", "prune:depth=2"), "has no parameter depth"),
    Case("recipe-out-of-range", lambda f: f.build("--recipe", "prune:heads=1.5"), "must be >= 0 and < 1"),
    Case("option-long-sequence", lambda f: f.build("--sequence-length", "4096", model=str(f.classifier)),
         "--sequence-length between"),
    # --- output folders ---------------------------------------------------------------------------------
    Case("out-user-folder", lambda f: (_user_folder(f.out / "intel-cpu"), f.build())[1], "not a deploykit build"),
    Case("out-user-file-at-target", lambda f: (f.file("out/intel-cpu", "mine"), f.build())[1], "not a deploykit build"),
    Case("out-is-a-file", lambda f: ["build", "--out", f.file("out.txt", "mine")], "is a file"),
    Case("out-foreign-manifest", lambda f: (f.file("out/intel-cpu/manifest.json", "{}"), f.build())[1],
         "not a deploykit build"),
    Case("out-broken-manifest", lambda f: (f.file("out/intel-cpu/manifest.json", "{"), f.build())[1],
         "not a deploykit build"),
    Case("out-symlink", lambda f: (_symlink(f.out / "intel-cpu", _user_folder(f.tmp / "elsewhere")), f.build())[1],
         "not a deploykit build"),
    Case("out-second-target-foreign", lambda f: (_user_folder(f.out / "intel-cpu"), f.build("--target", "arm-cpu,intel-cpu"))[1],
         "out/intel-cpu exists and is not a deploykit build"),
    # --- outputs that would overwrite an input, or fail late ------------------------------------------
    Case("output-summary-is-the-data", lambda f: f.build("--target", "no-such-target", "--summary-json", str(f.data)),
         "would overwrite --data"),
    Case("output-junit-is-the-model", lambda f: f.build("--junit-xml", str(f.classifier), model=str(f.classifier)),
         "would overwrite MODEL"),
    Case("output-summary-links-to-the-data", lambda f: f.build("--summary-json", _link(f.tmp / "s.json", f.data)),
         "would overwrite --data"),
    Case("output-out-replaces-the-data", lambda f: f.build(data=_copy(f.data, f.out / "intel-cpu" / "d.jsonl")),
         "would overwrite --data"),
    Case("output-summary-in-replaced-folder", lambda f: f.build("--summary-json", str(f.out / "arm-cpu" / "s.json"),
                                                                "--target", "arm-cpu"), "which the build replaces"),
    Case("output-junit-and-summary-one-file", lambda f: f.build("--summary-json", str(f.tmp / "r"), "--junit-xml",
                                                                str(f.tmp / "r")), "both name"),
    Case("output-summary-under-a-file", lambda f: f.build("--summary-json", str(f.out / "notes.txt" / "s.json")),
         "lies under the file"),
    Case("output-save-profile-under-a-file", lambda f: f.build("--save-profile", str(f.out / "notes.txt" / "p")),
         "lies under the file"),
    Case("output-search-cache-under-a-file", lambda f: ["search", *f.build("--cache", str(f.out / "notes.txt" / "c"))[1:]],
         "lies under the file"),
    Case("output-summary-is-the-recipe", lambda f: f.build("--recipe", f.file("r.yaml", "passes: []\n"),
                                                           "--summary-json", str(f.tmp / "r.yaml")),
         "would overwrite --recipe"),
    Case("output-summary-is-a-target-file", lambda f: (f.build("--target", "lab", "--summary-json",
                                                               str(f.tmp / "targets" / "lab.yaml")),
                                                       f.targets({"lab.yaml": LIST_TARGET})), "would overwrite"),
    # --- bounded parsing --------------------------------------------------------------------------------
    Case("recipe-yaml-alias-bomb", lambda f: f.build("--recipe", f.file("bomb.yaml", ALIAS_BOMB)), "aliases"),
    Case("recipe-5000-digits", lambda f: f.build("--recipe", f.file("r.yaml", "passes: [{pass: distill, layers: "
                                                                     + "9" * 5000 + "}]\n")), "5000 digits"),
    Case("recipe-json-5000-digits", lambda f: f.build("--recipe", f.file("r.json", '{"passes": [{"pass": "distill", '
                                                                          '"layers": ' + "9" * 5000 + "}]}")),
         "5000 digits"),
    Case("recipe-deep-yaml", lambda f: f.build("--recipe", f.file("r.yaml", "[" * 20_000 + "]" * 20_000)),
         "too deeply"),
    Case("devices-5000-digits", lambda f: (f.build("--target", "arm-cpu", "--device", "pi", "--devices", f.file(
        "devices.yaml", "devices:\n  pi: {address: 'ssh://pi@lab', threads: " + "9" * 5000 + "}\n")), {}),
         "5000 digits"),
    Case("devices-deep", lambda f: (f.build("--target", "arm-cpu", "--device", "pi", "--devices", f.file(
        "devices.yaml", "devices: " + "[" * 20_000 + "]" * 20_000 + "\n")), {}), "too deeply"),
    Case("devices-alias-bomb", lambda f: (f.build("--target", "arm-cpu", "--device", "pi", "--devices", f.file(
        "devices.yaml", ALIAS_BOMB)), {}), "aliases"),
    Case("target-alias-bomb", lambda f: (f.build("--target", "lab"), f.targets({"lab.yaml": ALIAS_BOMB})), "aliases"),
    Case("target-backtracking-host-match", lambda f: (f.build("--target", "lab"), f.targets(
        {"lab.yaml": LIST_TARGET + "host_match: '(a+)+$'\n"})), "exponential time"),
    Case("device-ssh-unclosed-ipv6", lambda f: (f.build("--target", "arm-cpu", "--device", "ssh://pi@[::1:22"), {}),
         "is not a device address"),
    Case("device-ssh-port-zero", lambda f: (f.build("--target", "arm-cpu", "--device", "ssh://pi@lab:0"), {}),
         "port 1 to 65535"),
    Case("device-ssh-huge-query", lambda f: (f.build("--target", "arm-cpu", "--device",
                                                     "ssh://pi@lab?threads=" + "9" * 5000), {}), "threads"),
    # --- reading build folders ------------------------------------------------------------------------
    Case("report-broken-json", lambda f: ["report", str(Path(f.file("dist/arm-cpu/report.json", "{")).parent.parent)],
         "report.json is not valid JSON"),
    Case("report-foreign-json", lambda f: ["report", str(Path(f.file("dist/arm-cpu/report.json", '{"a": 1}')).parent.parent)],
         "not as deploykit writes it"),
    Case("report-only-hidden", lambda f: ["report", str(Path(f.file("dist/.arm-cpu.partial-1/report.json", "{}")).parent.parent)],
         "holds no <target>/report.json"),
    Case("profile-missing", lambda f: ["profile", str(f.tmp / "model.tflite")], "does not exist"),
    Case("profile-broken-tokenizer", lambda f: ["profile", _artifact(f, "{")], "tokenizer.json is not valid JSON"),
    Case("profile-foreign-tokenizer", lambda f: ["profile", _artifact(f, '{"sequence_length": 8}')],
         "not as deploykit writes it"),
    Case("profile-zero-runs", lambda f: ["profile", _artifact(f, "{}"), "--runs", "0"], "--runs"),
]


# 278 bytes that expand to nine levels of nine-fold lists (387,420,489 strings) in a YAML reader that takes aliases.
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + level)}: &{chr(98 + level)} [" + ",".join([f"*{chr(97 + level)}"] * 9) + "]\n" for level in range(8))


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return str(link)


def _copy(source: Path, destination: Path, labels: bytes | None = None) -> str:
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(source.read_bytes())
    if labels is not None:
        (destination.parent / "labels.txt").write_bytes(labels)
    return str(destination)


def _user_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("years of work")
    return folder


def _symlink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)


def _artifact(f: Fixtures, tokenizer: str) -> str:
    f.file("built/tokenizer.json", tokenizer)
    return f.file("built/model.tflite", b"x")


@pytest.fixture
def fixtures(tmp_path, tiny_classifier, tiny_backbone_file, labelled_data) -> Fixtures:
    out = tmp_path / "out"
    (out / "arm-cpu").mkdir(parents=True)  # an earlier build of another target, and a file of the user's
    (out / "arm-cpu" / "model.tflite").write_bytes(b"an earlier artifact")
    write_manifest(out / "arm-cpu")
    (out / "notes.txt").write_text("the user's own file")
    return Fixtures(tmp_path, tiny_classifier, tiny_backbone_file, labelled_data, out)


def test_the_corpus_is_large_and_names_are_unique():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, fixtures: Fixtures, snapshot, monkeypatch):
    monkeypatch.delenv("DEPLOYKIT_TARGETS", raising=False)
    made = case.setup(fixtures)
    args, env = made if isinstance(made, tuple) else (made, {})
    before = snapshot(fixtures.out)
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert case.message in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert snapshot(fixtures.out) == before
    assert len(errors[0]) < 800  # a hostile value is quoted short, never whole


def test_an_input_named_as_an_output_is_left_as_it_was(fixtures: Fixtures):
    """The defect this guards: a failed build wrote its --summary-json over the --data file it was given."""
    data = fixtures.data.read_bytes()
    result = CliRunner().invoke(main, fixtures.build("--target", "no-such-target", "--summary-json", str(fixtures.data)))
    assert result.exit_code == 2 and fixtures.data.read_bytes() == data
