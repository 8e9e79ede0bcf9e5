"""Plugins from other packages (entry points) and the installed wheel: what a user's environment sees."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploykit.backends.base import BACKENDS, get_backend
from deploykit.cli import main
from deploykit.compilers.base import COMPILERS, get_compiler
from deploykit.passes.base import PASSES, get_pass
from deploykit.profiling.base import RUNNERS, get_runner
from deploykit.target_loader import load_target_file

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_MODULES = {
    "passes": '''
        from deploykit.passes.base import Pass, PassResult
        from deploykit.passes.parameters import PassParameters, parameter

        class EchoParameters(PassParameters):
            loudness: int = parameter(1, "How loud the echo is.", ge=0, search=(0, 3))

        class Echo(Pass):
            name = "echo-pass"
            description = "changes nothing, loudly"
            Parameters = EchoParameters

            def apply(self, context):
                return PassResult(self.name, self.describe())
    ''',
    "backends": '''
        from deploykit.backends.base import Backend

        class EchoBackend(Backend):
            name = "echo-runtime"
            format = "echo"
            suffix = ".echo"
            precisions = {"fp32": "copies the graph"}
    ''',
    "compilers": '''
        from deploykit.compilers.base import CompilerSettings, DeviceCompiler

        class EchoSettings(CompilerSettings):
            volume: int = 3

        class EchoCompiler(DeviceCompiler):
            name = "echo-compiler"
            settings_class = EchoSettings

            def missing(self):
                return "the echo chamber is not installed"
    ''',
    "runners": '''
        from deploykit.profiling.base import ProfileRunner

        class EchoRunner(ProfileRunner):
            name = "echo-runner"

            def threads(self, target):
                return 1
    ''',
}


@pytest.fixture
def echo_plugins(tmp_path, monkeypatch):
    """A package declaring one plugin of each kind through entry points, pip-installed into a test folder."""
    source = tmp_path / "echo-plugins"
    (source / "echo_plugins").mkdir(parents=True)
    (source / "echo_plugins" / "__init__.py").write_text("")
    for module, text in PLUGIN_MODULES.items():
        (source / "echo_plugins" / f"{module}.py").write_text(textwrap.dedent(text))
    groups = "\n".join(f'[project.entry-points."deploykit.{group}"]\necho = "echo_plugins.{group}"\n'
                       for group in ("passes", "backends", "compilers", "runners"))
    (source / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "deploykit-echo-plugins"
        version = "0.1"

        [tool.setuptools]
        packages = ["echo_plugins"]
    ''') + groups)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    for registry in (PASSES, BACKENDS, COMPILERS, RUNNERS):  # a fresh look at the entry points, undone afterwards
        registry.load_all()  # the built-in plugins, registered before the test's copy is made
        monkeypatch.setattr(registry, "entries", dict(registry.entries))
        monkeypatch.setattr(registry, "_everything_loaded", False)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [name for name in sys.modules if name.startswith("echo_plugins")]:
        del sys.modules[name]  # the next test imports (and so registers) them again


def test_an_installed_package_adds_a_plugin_of_each_kind(echo_plugins, tmp_path):
    assert get_pass("echo-pass", loudness=2).describe() == {"loudness": 2}
    assert get_backend("echo-runtime").suffix == ".echo"
    assert get_compiler({"name": "echo-compiler", "volume": 5}).missing() == "the echo chamber is not installed"
    assert get_runner("echo-runner").threads(None) == 1
    target = tmp_path / "echo-board.yaml"
    target.write_text("description: d\ndevice: d\nruntime: echo-runtime\nprecisions: [fp32]\n"
                      "compiler: {name: echo-compiler, volume: 2}\nprofiling: echo-runner\n")
    loaded = load_target_file(target)
    assert (loaded.runtime, loaded.profiling, loaded.compiler["name"]) == ("echo-runtime", {"name": "echo-runner"},
                                                                          "echo-compiler")
    listed = CliRunner().invoke(main, ["passes", "echo-pass"])
    assert listed.exit_code == 0 and "How loud the echo is." in listed.stdout


def test_a_plugin_setting_is_checked_by_the_plugin(echo_plugins, tmp_path):
    target = tmp_path / "echo-board.yaml"
    target.write_text("description: d\ndevice: d\nruntime: litert\nprecisions: [fp32]\n"
                      "compiler: {name: echo-compiler, volume: loud}\n")
    result = CliRunner().invoke(main, ["targets"], env={"DEPLOYKIT_TARGETS": str(tmp_path)})
    assert result.exit_code == 2 and "compiler: device compiler 'echo-compiler' settings are invalid: volume" in result.stderr


def test_every_package_folder_ships_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "deploykit").rglob("__init__.py")}
    assert folders <= listed


def test_the_wheel_carries_the_built_in_targets(tmp_path):
    """Installed from the wheel (not editable) into a fresh environment, `deploykit targets` lists every built-in."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    fresh_python = fresh / "bin" / "python"
    fresh_site = Path(subprocess.run([fresh_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     check=True, capture_output=True, text=True).stdout.strip())
    # deploykit itself comes from the wheel; its dependencies are borrowed from this environment (no network here).
    (fresh_site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh_python), "install", "-q", "--no-deps",
                    "--no-index", *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "DEPLOYKIT_TARGETS")}
    where = subprocess.run([fresh_python, "-c", "import deploykit.targets as t; print(t.BUILTIN_TARGETS_DIR)"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(fresh_site)
    listed = subprocess.run([fresh / "bin" / "deploykit", "targets"], cwd=tmp_path, env={**env, "COLUMNS": "200"},
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    built_in = {path.stem for path in (ROOT / "targets").glob("*.yaml")}
    assert built_in and all(name in listed.stdout for name in built_in)
