"""Recipes: which passes run, in which order, with which parameters.

Written three ways, read into one form:
- the shorthand `distill:layers=3,prune:heads=0.25,pattern=2:4,qat` (a segment `key=value` continues the
  previous pass's parameters);
- a YAML or JSON file `{passes: [{pass: distill, layers: 3}, {pass: qat}], precision: int8}` (`precision`
  optional);
- the `recipe` entry of a build's report.json, which is that same form with every parameter resolved, so
  `--recipe dist/arm-cpu/report.json` builds the same artifact again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.errors import DeployKitError
from deploykit.passes.base import PASSES, get_pass, pass_class

Recipe = tuple[tuple[str, tuple], ...]  # passes in order, each with its parameters as sorted (key, value) pairs
RECIPE_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class RecipeSpec:
    """Pass names in order, their parameters, and the precision a recipe file pins (None: the target's)."""

    names: tuple[str, ...]
    parameters: dict[str, dict]
    precision: str | None = None


def recipe(names: tuple[str, ...], parameters: dict | None = None) -> Recipe:
    """Pass names plus `{name: {parameter: value}}` as a hashable recipe (what caches and candidates key on)."""
    return tuple((name, tuple(sorted((parameters or {}).get(name, {}).items()))) for name in names)


def read_recipe(text: str) -> RecipeSpec:
    """A recipe from the shorthand, or from a YAML/JSON recipe file or report.json when `text` names one."""
    path = Path(text).expanduser()
    if path.suffix.lower() in RECIPE_FILE_SUFFIXES:
        if not path.is_file():
            raise DeployKitError(f"recipe file {str(path)!r} does not exist; pass a YAML/JSON recipe file, a build's "
                                 "report.json, or a recipe like 'distill:layers=3,qat'.")
        return _recipe_file(path)
    names, parameters = parse_recipe(text)
    return RecipeSpec(names, parameters)


def parse_recipe(text: str) -> tuple[tuple[str, ...], dict[str, dict]]:
    """`"distill:layers=3,prune:heads=0.25,qat"` -> pass names in order and their parameters."""
    names: list[str] = []
    parameters: dict[str, dict] = {}
    for segment in (part.strip() for part in text.split(",")):
        if not segment:
            continue
        equals, colon = segment.find("="), segment.find(":")
        if equals != -1 and (colon == -1 or equals < colon):  # key=value (the value may hold ':', as in 2:4)
            if not names:
                raise DeployKitError(f"--recipe: {segment!r} sets a parameter before any pass; write name:key=value.")
            key, value = segment.split("=", 1)
            parameters[names[-1]][key.strip()] = parse_value(value)
            continue
        name, _, rest = segment.partition(":")
        _add_pass(name.strip(), names, parameters, "--recipe")
        if rest:
            key, found, value = rest.partition("=")
            if not found:
                raise DeployKitError(f"--recipe: write pass parameters as name:key=value, got {segment!r}.")
            parameters[name.strip()][key.strip()] = parse_value(value)
    if not names:
        raise DeployKitError("--recipe is empty; give passes like 'distill:layers=3,qat'.")
    check_recipe(tuple(names), parameters)
    return tuple(names), parameters


def check_recipe(names: tuple[str, ...], parameters: dict[str, dict]) -> None:
    """Fail now on a bad order or parameter, not after an hour of training."""
    check_order(names)
    for name in names:
        get_pass(name, **parameters.get(name, {}))


def check_order(names: tuple[str, ...]) -> None:
    """Reject orders that cannot work: training against the original after the vocabulary changed, qat not last."""
    for index, name in enumerate(names):
        later = names[index + 1:]
        if pass_class(name).must_be_last and later:
            raise DeployKitError(f"recipe: {name!r} must be the last pass (it simulates the exported graph); "
                                 f"move {', '.join(later)} before it.")
        if pass_class(name).changes_token_ids and (
            learners := [n for n in later if pass_class(n).learns_from_original]
        ):
            raise DeployKitError(f"recipe: {', '.join(learners)} learns from the original model on its token ids, so "
                                 f"put it before {name}.")


def recipe_document(passes: list[dict], precision: str) -> dict:
    """The recipe file form of what a build shipped: every pass with its resolved parameters, and the precision."""
    return {"passes": [{"pass": record["pass"], **record["parameters"]} for record in passes], "precision": precision}


def _recipe_file(path: Path) -> RecipeSpec:
    from deploykit.user_files import parse_yaml, read_json, read_text

    if path.suffix.lower() == ".json":  # a build's report.json too, which may come from elsewhere: read bounded
        document = read_json(path, dict, untrusted=True)
    else:
        document = parse_yaml(read_text(path), f"recipe file {path}")
    if isinstance(document, dict) and isinstance(document.get("recipe"), dict):
        document = document["recipe"]  # a build's report.json
    if not isinstance(document, dict) or not isinstance(document.get("passes"), list):
        raise DeployKitError(f"recipe file {path} needs a 'passes' list, e.g. passes: [{{pass: distill, layers: 3}}] "
                             "(or pass a build's report.json).")
    unknown = sorted(set(document) - {"passes", "precision"})
    if unknown:
        raise DeployKitError(f"recipe file {path} has unknown keys {unknown}; it takes 'passes' and 'precision'.")
    names: list[str] = []
    parameters: dict[str, dict] = {}
    for number, entry in enumerate(document["passes"], 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("pass"), str):
            raise DeployKitError(f"recipe file {path}: pass {number} needs a 'pass' name, e.g. {{pass: prune, heads: 0.25}}.")
        values = {key: value for key, value in entry.items() if key != "pass"}
        _add_pass(entry["pass"], names, parameters, f"recipe file {path}")
        parameters[entry["pass"]] = values
    precision = document.get("precision")
    if precision is not None and not isinstance(precision, str):
        raise DeployKitError(f"recipe file {path}: precision must be a name like 'int8', got {precision!r}.")
    check_recipe(tuple(names), parameters)
    return RecipeSpec(tuple(names), parameters, precision)


def _add_pass(name: str, names: list[str], parameters: dict, where: str) -> None:
    if name not in PASSES.names():
        raise DeployKitError(f"{where}: unknown pass {name!r}; known passes: {', '.join(PASSES.names())}.")
    if name in names:
        raise DeployKitError(f"{where}: pass {name!r} appears twice; give each pass once with all its parameters.")
    names.append(name)
    parameters[name] = {}


def parse_value(text: str) -> Any:
    """A shorthand value as int, float, bool or string."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text

