"""LiteRT's ahead-of-time NPU compilation (`ai_edge_litert.aot`) for Qualcomm, MediaTek and Google Tensor.

The ai-edge-litert wheel ships the AOT driver (`tools/apply_plugin_main`) and each
vendor's compiler plugin (`vendors/<vendor>/compiler/*.so`), but a plugin loads only
with the vendor's own compiler libraries (QNN, NeuroPilot, Tensor SDK), which come in a
separate wheel, `ai-edge-litert-sdk-<vendor>`. Without them the AOT flow still runs and
fails inside the plugin ("libQnnHtp.so: cannot open shared object file"), so `missing()`
looks for the same three things the aot backends look up, without importing or running
any of them. Either way the target folder gets `compile_npu.py`, the same compilation.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from deploykit.compilers.base import CompileRequest, CompileResult, CompilerSettings, DeviceCompiler

# vendor, as in `ai_edge_litert.aot.vendors.<vendor>` -> (name in messages, the SDK wheel's import name)
VENDORS = {
    "qualcomm": ("Qualcomm", "ai_edge_litert_sdk_qualcomm"),
    "mediatek": ("MediaTek", "ai_edge_litert_sdk_mediatek"),
    "google_tensor": ("Google Tensor", "ai_edge_litert_sdk_google_tensor"),
}
_DOC = ("Compiles {model} for the {name} NPU ({soc}) with LiteRT's AOT compiler; writes {stem}_<SoC>.tflite here.\n\n"
        "Run it on x86-64 Linux after: {install}\n")
# Every value enters the script as a Python literal (repr), never as code: target files may come from others.
_SCRIPT = '''{doc}
import pathlib, sys, tempfile

from ai_edge_litert.aot import aot_compile
from ai_edge_litert.aot.vendors.{vendor} import target

here = pathlib.Path(__file__).resolve().parent
with tempfile.TemporaryDirectory() as scratch:
    result = aot_compile.aot_compile(str(here / {model!r}), output_dir=scratch,
                                     target=target.Target(target.SocModel({soc!r})))
    result.export(here, model_name={stem!r})
print(result.compilation_report())
sys.exit(0 if result.models else 1)
'''


def litert_version() -> str | None:
    """The installed ai-edge-litert (its vendor SDK wheels carry the same version), or None."""
    try:
        return importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        return None


def has_aot() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None and \
        importlib.util.find_spec("ai_edge_litert.aot") is not None


def soc_models(vendor: str) -> list[str] | None:
    """The SoCs the installed package compiles for (its SocModel enum, less ALL); None without the package."""
    if not has_aot():
        return None
    enum = importlib.import_module(f"ai_edge_litert.aot.vendors.{vendor}.target").SocModel
    return [soc.value for soc in enum if soc.name != "ALL"]


def install_line(vendor: str, with_litert: bool) -> str:
    version = litert_version() or "2.3.0"
    litert = f"ai-edge-litert=={version} " if with_litert else ""
    return f"pip install {litert}ai-edge-litert-sdk-{vendor.replace('_', '-')}=={version}"


class LiteRTAotSettings(CompilerSettings):
    """Which NPU to compile for: one SoC, or every SoC the vendor's enum lists when soc_model is left out."""

    vendor: Literal["qualcomm", "mediatek", "google_tensor"]
    # None: the package's ALL, one compiled model per SoC (as Play AI packs ship them). SoC enum values are
    # identifiers (SM8650, MT6989, Tensor_G4): checked here too, where the package is not installed.
    soc_model: str | None = Field(None, pattern=r"^[A-Za-z0-9_]{1,64}$")

    @field_validator("soc_model")
    @classmethod
    def _known_soc(cls, value: str | None, info: ValidationInfo) -> str | None:
        vendor = info.data.get("vendor")
        if value is None or vendor is None or (known := soc_models(vendor)) is None:
            return value
        match = next((soc for soc in known if soc.lower() == value.lower()), None)
        if match is None:
            raise ValueError(f"{value!r} is not a {vendor} SoC that ai-edge-litert {litert_version()} compiles for; "
                             f"valid: {', '.join(known)}")
        return match


class LiteRTAotCompiler(DeviceCompiler):
    name = "litert-aot"
    settings_class = LiteRTAotSettings
    settings: LiteRTAotSettings

    def missing(self) -> str | None:
        vendor, (label, sdk) = self.settings.vendor, VENDORS[self.settings.vendor]
        if not has_aot():
            return f"ai-edge-litert with its aot package is not installed: {install_line(vendor, True)} (x86-64 Linux)"
        from ai_edge_litert.aot.core import apply_plugin, common

        backend = importlib.import_module(f"ai_edge_litert.aot.vendors.{vendor}.{vendor}_backend")
        for resource, what in ((apply_plugin._BINARY, "AOT driver"), (backend.COMPILER_PLUGIN_LIB_PATH, "plugin")):
            try:
                common.get_resource(resource)
            except FileNotFoundError:
                return (f"ai-edge-litert {litert_version()} has no {label} compiler {what} ({resource}) here; "
                        "LiteRT's AOT compilation runs on x86-64 Linux")
        if importlib.util.find_spec(sdk) is None and not (
                vendor == "google_tensor" and os.environ.get("GOOGLE_TENSOR_COMPILER_LIB")):
            return (f"the {label} compiler SDK that LiteRT's {label} plugin loads is not installed: "
                    f"{install_line(vendor, False)} (x86-64 Linux)")
        return None

    def compile(self, request: CompileRequest) -> CompileResult:
        model, folder = request.artifact.path, request.folder
        vendor, label, soc = self.settings.vendor, VENDORS[self.settings.vendor][0], self.settings.soc_model or "ALL"
        shown = request.model_in_folder
        facts = {"vendor": vendor, "soc_model": soc, "command": "python compile_npu.py",
                 "install": install_line(vendor, True)}
        script = folder / "compile_npu.py"
        doc = _DOC.format(model=shown, name=label, soc=soc, stem=model.stem, install=facts["install"])
        script.write_text(_SCRIPT.format(doc=repr(doc), model=shown, stem=model.stem, vendor=vendor, soc=soc))
        if (reason := self.missing()) is not None:
            return CompileResult(self.name, "not run", reason, [script], facts)
        from ai_edge_litert.aot import aot_compile

        targets = importlib.import_module(f"ai_edge_litert.aot.vendors.{vendor}.target")
        with tempfile.TemporaryDirectory(prefix="litert-aot-") as scratch, \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:  # keep_going: a SoC the vendor compiler refuses lands in failed_backends instead of raising
                result = aot_compile.aot_compile(str(model), output_dir=scratch, keep_going=True,
                                                 target=targets.Target(targets.SocModel(soc)))
            except (OSError, ValueError, RuntimeError, NotImplementedError) as error:  # e.g. an unreadable model
                line = (str(error).splitlines() or [""])[0]
                return CompileResult(self.name, "failed", f"LiteRT AOT raised {type(error).__name__}: {line}",
                                     [script], facts)
            result.export(folder, model_name=model.stem)  # <stem>_<Manufacturer>_<SoC>.tflite per compiled SoC
        files = [script] + [folder / f"{model.stem}{backend.target_id_suffix}.tflite"
                            for backend, _ in result.models_with_backend]
        compiled = [{"soc": backend.target_id, "file": f"{model.stem}{backend.target_id_suffix}.tflite",
                     "subgraphs": [{"subgraph": s.subgraph_index, "ops_on_npu": s.num_ops_offloaded,
                                    "ops_total": s.num_total_ops, "npu_partitions": s.num_partitions_offloaded}
                                   for s in (out.partition_stats.subgraph_stats if out.partition_stats else [])]}
                    for backend, out in result.models_with_backend]
        refused = [{"soc": backend.target_id, "error": keep_log(error, folder, backend.target_id, files)}
                   for backend, error in result.failed_backends]
        details = {**facts, "compiled": compiled, "refused": refused}
        if not compiled:
            first = refused[0] if refused else {"soc": soc, "error": "no compiled model came back"}
            return CompileResult(self.name, "failed", f"the {label} compiler failed for {first['soc']}: "
                                 f"{first['error']}", files, details)
        per_soc = ", ".join(f"{c['soc']} {sum(s['ops_on_npu'] for s in c['subgraphs'])}/"
                            f"{sum(s['ops_total'] for s in c['subgraphs'])}" for c in compiled)
        also = f"; refused for {', '.join(r['soc'] for r in refused)}" if refused else ""
        return CompileResult(self.name, "compiled", f"ops on the NPU: {per_soc}{also}", files, details)


def keep_log(error: str, folder: Path, soc: str, files: list[Path]) -> str:
    """The apply_plugin error with its log moved from /tmp into the folder, and the log's most telling line.

    LiteRT puts an error's cause on a line starting with "└"; vendor libraries log "ERROR: ..." lines.
    """
    found = re.search(r"See (\S+) for details", error)
    if not found or not Path(found[1]).is_file():
        return error
    log = Path(shutil.move(found[1], folder / f"compile_npu_{soc}.log"))
    files.append(log)
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    cause = [line for line in lines if line.startswith("└")][-1:] or [line for line in lines if "ERROR" in line][:1]
    return f"{error[:found.start()].strip()} See {log.name}: {cause[0][:300] if cause else 'no error line'}"
