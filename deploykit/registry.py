"""One plugin mechanism for passes, backends, device compilers and profiling runners.

A plugin is a subclass of its kind's base class with a `name`; defining the class
registers it. deploykit's own plugins are the modules of the kind's package
(`deploykit/passes/prune.py`, ...), found by listing the package, so a new one is one
module. Another package adds plugins with an entry point in the kind's group
(`deploykit.passes`, `deploykit.backends`, `deploykit.compilers`, `deploykit.runners`)
naming the module that defines them:

    [project.entry-points."deploykit.passes"]
    my-pass = "my_package.my_pass"
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
from typing import Generic, TypeVar

from pydantic import ValidationError

from deploykit.errors import DeployKitError

PLUGIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
Plugin = TypeVar("Plugin")


class Registry(Generic[Plugin]):
    """The plugins of one kind, by name; modules are imported only when a name is asked for or listed."""

    def __init__(self, kind: str, package: str, group: str):
        self.kind = kind  # in messages: "pass", "backend", ...
        self.package = package  # deploykit's own plugins: this package's modules (less `base`)
        self.group = group  # entry-point group of other packages' plugins
        self.entries: dict[str, type[Plugin]] = {}
        self._everything_loaded = False

    def add(self, plugin: type[Plugin]) -> None:
        """Called from the base class's `__init_subclass__`."""
        name = getattr(plugin, "name", None)
        if not isinstance(name, str) or not PLUGIN_NAME.fullmatch(name):
            raise TypeError(f"a {self.kind} plugin needs a `name` of lowercase letters, digits and hyphens; "
                            f"{plugin.__qualname__} has {name!r}")
        self.entries[name] = plugin

    def get(self, name: object) -> type[Plugin]:
        """The plugin called `name`; an unknown name is a one-line error listing the known ones."""
        if not isinstance(name, str) or not PLUGIN_NAME.fullmatch(name):
            raise DeployKitError(f"{self.kind} names are lowercase letters, digits and hyphens; got {name!r}.")
        if name not in self.entries:
            self._import_own(name.replace("-", "_"))
        if name not in self.entries:
            self.load_all()
        if name not in self.entries:
            raise DeployKitError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}.")
        return self.entries[name]

    def configured(self, spec: object, example: str) -> Plugin:
        """A plugin made from a settings block (`{name: edgetpu, timeout_s: 60}`), validated by its settings_class."""
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not PLUGIN_NAME.fullmatch(name):
            raise DeployKitError(f"a {self.kind} block needs a name of lowercase letters, digits and hyphens, "
                                 f"e.g. `{example}`; got {name!r}.")
        plugin = self.get(name)
        try:
            settings = plugin.settings_class.model_validate(spec)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
            raise DeployKitError(f"{self.kind} {name!r} settings are invalid: {problems}.") from None
        return plugin(settings)

    def names(self) -> list[str]:
        self.load_all()
        return sorted(self.entries)

    def load_all(self) -> None:
        """Import every built-in module of the kind and every installed entry point, once."""
        if self._everything_loaded:
            return
        self._everything_loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if module.name != "base" and not module.ispkg:
                self._import_own(module.name)
        for entry in importlib.metadata.entry_points(group=self.group):
            try:
                entry.load()
            except Exception as error:  # a broken third-party plugin names itself, not a traceback
                raise DeployKitError(f"the {self.kind} plugin {entry.name!r} ({entry.value}) failed to load: "
                                     f"{type(error).__name__}: {error}") from None

    def _import_own(self, module: str) -> None:
        """Import one of deploykit's own plugin modules if it exists; its vendor packages may be missing."""
        full = f"{self.package}.{module}"
        if importlib.util.find_spec(full) is None:
            return
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as error:
            raise DeployKitError(f"the {module.replace('_', '-')} {self.kind} needs the package {error.name!r}; "
                                 "install it and retry.") from None
