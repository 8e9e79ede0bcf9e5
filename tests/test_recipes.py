"""Recipes written three ways (shorthand, file, a build's report.json) read into one form."""

from __future__ import annotations

import json

import pytest

from deploykit.pipeline import build
from deploykit.errors import DeployKitError
from deploykit.passes.recipe import parse_recipe, read_recipe
from deploykit.profiling.base import ProfileSettings
from deploykit.report.manifest import sha256_of

FAST = ProfileSettings(runs=3, warmup=0)


def test_a_value_holding_a_colon_continues_the_pass_in_any_order():
    first = parse_recipe("prune:heads=0.25,pattern=2:4")
    second = parse_recipe("prune:pattern=2:4,heads=0.25")
    assert first[1] == second[1] == {"prune": {"heads": 0.25, "pattern": "2:4"}}


def test_a_yaml_recipe_file_reads_like_the_shorthand(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("passes:\n  - pass: distill\n    layers: 3\n  - pass: trim-vocab\nprecision: int8\n")
    spec = read_recipe(str(path))
    assert (spec.names, spec.parameters, spec.precision) == (("distill", "trim-vocab"), {"distill": {"layers": 3},
                                                                                          "trim-vocab": {}}, "int8")


@pytest.mark.parametrize("content, message", [
    ("passes: 3\n", "needs a 'passes' list"),
    ("passes: [{layers: 3}]\n", "needs a 'pass' name"),
    ("passes: [{pass: distill, depth: 3}]\n", "has no parameter depth"),
    ("passes: []\nspeed: fast\n", "unknown keys"),
    ("passes: [{pass: qat}, {pass: distill}]\n", "must be the last pass"),
])
def test_bad_recipe_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "recipe.yml"
    path.write_text(content)
    with pytest.raises(DeployKitError, match=message):
        read_recipe(str(path))


def test_report_json_rebuilds_a_byte_identical_artifact(tiny_classifier, labelled_data, tmp_path):
    options = dict(profile=FAST, calibration_samples=20, evaluation_samples=20)
    first = build(tiny_classifier, "arm-cpu", labelled_data, out=tmp_path / "first",
                  recipe="prune:heads=0.5,steps=0,trim-vocab", **options)
    recipe = first.report["recipe"]
    assert [entry["pass"] for entry in recipe["passes"]] == ["prune", "trim-vocab"]
    assert recipe["precision"] == first.report["artifact"]["precision"]
    again = build(tiny_classifier, "arm-cpu", labelled_data, out=tmp_path / "again",
                  recipe=str(first.folder / "report.json"), use_cache=False, **options)
    assert again.report["recipe"] == recipe
    assert sha256_of(again.artifact.path) == sha256_of(first.artifact.path)
    assert json.loads((again.folder / "report.json").read_text())["passes"][0]["parameters"]["heads"] == 0.5


def test_a_distilled_artifact_does_not_depend_on_what_ran_before(tiny_classifier, labelled_data, tmp_path):
    """The build seeds every pass: a student's dropout seeds do not come from whatever drew random numbers earlier."""
    import random

    import keras

    options = dict(profile=FAST, calibration_samples=20, evaluation_samples=20, use_cache=False,
                   recipe="distill:layers=1,steps=8,hidden_steps=4,batch_size=8")
    artifacts = []
    for earlier in (1, 2):
        keras.utils.set_random_seed(earlier)
        random.random()
        result = build(tiny_classifier, "arm-cpu", labelled_data, out=tmp_path / str(earlier), **options)
        artifacts.append(sha256_of(result.artifact.path))
    assert artifacts[0] == artifacts[1]
