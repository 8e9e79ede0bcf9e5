"""Generative decoders on the command line: `build`'s decoder options and path, and `deploykit generate`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deploykit.cli.app import console, main, output
from deploykit.cli.build_options import SECTIONS
from deploykit.errors import DeployKitError, GateFailure
from deploykit.targets.schema import GENERATION_WEIGHTS

# The options `build` takes for a decoder besides these: the rest are the encoders' and are refused, not ignored.
SHARED_OPTIONS = ("model", "target_names", "data", "out", "force", "seed", "threads", "runs", "config", "device",
                  "devices_file", "trust_new_host")


def generation_options(command):
    """`build`'s options for decoders (the "Generation" section of its --help)."""
    options = [
        click.option("--weights", type=click.Choice(GENERATION_WEIGHTS),
                     help="Decoders: weight precision instead of the target's list (tried in order: the first that "
                     "passes the gates ships); -dynamic also quantizes activations at run time (LiteRT); a16w8 is "
                     "full-integer with int16 activations (LiteRT, NPUs)."),
        click.option("--cache-length", type=click.IntRange(min=2), default=512, show_default=True,
                     help="Decoders: tokens the KV cache holds (prompt plus generated)."),
        click.option("--prefill-length", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Decoders on static-shape runtimes (LiteRT): tokens per prefill call; longer prompts run "
                     "in chunks."),
        click.option("--weight-group-size", type=click.Choice(["32", "64", "128", "256"]),
                     help="Decoders, int4: input channels sharing one scale (default: 64, halved until it divides "
                     "the hidden size)."),
        click.option("--int4-method", type=click.Choice(["rtn", "awq"]),
                     help="Decoders, int4: rtn rounds each group to nearest (data-free); awq (OpenVINO) fits "
                     "activation-aware scales with scale estimation on calibration passages of --data (default: the "
                     "target's)."),
        click.option("--max-perplexity-ratio", type=click.FloatRange(min=1),
                     help="Decoders, gate: largest perplexity on held-out text over the original's (default: the "
                     "target's, 1.10)."),
        click.option("--min-top1-agreement", type=click.FloatRange(0, 1),
                     help="Decoders, gate: smallest share of positions whose most likely next token is the "
                     "original's (default: the target's, 0.90)."),
        click.option("--min-greedy-match", type=click.FloatRange(0, 1),
                     help="Decoders, gate: smallest mean share of the original's first 16 greedy tokens repeated "
                     "(default: reported, not gated)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command




def build_decoder_command(arguments: dict) -> None:
    """`deploykit build DECODER`: refuse encoder-only options that were set, then build every target."""
    from deploykit.generation.build import GenerationOptions, build_decoder, check_generation_target
    from deploykit.generation.device import decoder_runner
    from deploykit.generation.loaders import load_decoder
    from deploykit.generation.profile import TimingPlan
    from deploykit.progress import StepLog
    from deploykit.target_loader import resolve_targets

    _refuse_encoder_options(arguments)
    a = arguments
    targets = resolve_targets(a["target_names"])
    devices = {}
    for target in targets:  # before the model loads
        check_generation_target(target)
        if a["device"]:
            devices[target.name] = decoder_runner(a["device"], target, a["devices_file"], a["trust_new_host"])
    options = GenerationOptions(
        data=Path(a["data"]) if a["data"] else None, weights=a["weights"], cache_length=a["cache_length"],
        prefill_length=a["prefill_length"], group_size=int(a["weight_group_size"]) if a["weight_group_size"] else None,
        algorithm=a["int4_method"], max_perplexity_ratio=a["max_perplexity_ratio"],
        min_top1_agreement=a["min_top1_agreement"], min_greedy_match=a["min_greedy_match"],
        timing=TimingPlan(rounds=max(3, min(a["runs"], 20))), threads=a["threads"], seed=a["seed"], force=a["force"],
        devices=devices)
    log = StepLog(console)
    with log.step("load", f"loading {a['model']}"):
        bundle = load_decoder(a["model"])
    reports = build_decoder(bundle, targets, Path(a["out"]), options, log)
    for report in reports:
        if not report["passed"]:
            continue
        artifact, fidelity = report["artifact"], report["fidelity"]
        decode = next((v for k, v in report["timing"]["artifacts"]["artifact"].items() if k.startswith("decode")), {})
        speed = f", decode {decode['median']:.0f} tok/s" if decode else ""
        output.print(f"{report['target']}: {artifact['weights']}, {artifact['bytes'] / 1e6:.1f} MB, perplexity ratio "
                     f"{fidelity['perplexity_ratio']:.3f}, top-1 {fidelity['top1_agreement']:.3f}{speed} -> "
                     f"{Path(a['out']) / report['target']}/report.md", highlight=False, markup=False)
    failed = [report["target"] for report in reports if not report["passed"]]
    if failed:
        raise GateFailure(f"no weight precision passed the gates for {', '.join(failed)}; see "
                          + ", ".join(f"{Path(a['out']) / name}/report.md" for name in failed) + ".")


def _refuse_encoder_options(arguments: dict) -> None:
    context = click.get_current_context()
    for parameter in context.command.params:
        name = parameter.name
        if name in SHARED_OPTIONS or name in SECTIONS["Generation (decoders)"] or name not in arguments:
            continue
        default = parameter.default if not callable(parameter.default) else None
        value = arguments[name]
        if value not in (default, None, (), False) and not (parameter.multiple and not value):
            flag = parameter.opts[0] if parameter.opts else name
            raise DeployKitError(f"{flag} applies to encoder builds; a decoder build takes --target, --data, --out, "
                                 "--seed, --threads, --runs and the Generation options (see `deploykit build --help`).")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("prompt")
@click.option("--max-new-tokens", "-n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0: greedy; above 0: sampled from the top-k tokens with --seed.")
@click.option("--top-k", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: all cores).")
@click.option("--device", help="Run it on this device instead of here: ssh://user@host[:port] or a name from the "
              "devices file (the device needs Python 3.8+, NumPy and the artifact's runtime).")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False),
              help="Devices file naming the lab's devices (default: $DEPLOYKIT_DEVICES, else ./devices.yaml).")
@click.option("--trust-new-host", is_flag=True, help="Accept an SSH device whose host key is not in known_hosts "
              "yet, and record it there (trust on first use).")
def generate(folder: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int,
             threads: int | None, device: str | None, devices_file: str | None, trust_new_host: bool) -> None:
    """Continue PROMPT with the decoder built in FOLDER (OUT/<target>), streaming tokens as they come.

    Runs the artifact in its own runtime, with the tokenizer.json shipped beside it: on this machine, or with
    --device on a device over SSH.
    """
    from deploykit.generation.device import folder_runner
    from deploykit.generation.runtime import Sampling
    from deploykit.generation.streaming import generate_text

    runner = folder_runner(Path(folder), device, devices_file, trust_new_host) if device else None
    sampling = Sampling(temperature, top_k, seed)
    for piece in generate_text(Path(folder), prompt, max_new_tokens, sampling, threads, runner):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")

