"""Name -> component tables, filled by the registration hooks.

Every component remembers the plugin that registered it, so a duplicate
name can name both plugins and a failure inside a component can name its
plugin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from vae_automl.components import Architecture, Component, Compressor, Dataset, Exporter, Objective, Task
from vae_automl.errors import PluginError
from vae_automl.plugin_manager import get_plugin_manager, plugin_distribution, plugin_version
from vae_automl.storage.codec import Codec

if TYPE_CHECKING:
    import pluggy

    from vae_automl.vae import VAE


class Named(Protocol):
    name: str


C = TypeVar("C", bound=Named)

HOOK_FOR_KIND: dict[str, tuple[str, type[Component]]] = {
    "architecture": ("register_architectures", Architecture),
    "compressor": ("register_compressors", Compressor),
    "objective": ("register_objectives", Objective),
    "dataset": ("register_datasets", Dataset),
    "exporter": ("register_exporters", Exporter),
    "task": ("register_tasks", Task),
}
"""The component kinds (``vae-automl plugins`` lists them); codecs are registered beside them."""
CODEC_HOOK = "register_codecs"


@dataclass(frozen=True)
class Entry(Generic[C]):
    component: C
    plugin: str
    version: str
    distribution: str = ""
    """The pip package providing the plugin ("" when unknown, e.g. a module on the path)."""
    module: str = ""
    """The plugin's module (what ``--plugin`` takes)."""

    def provenance(self) -> dict[str, str]:
        """What a manifest records about the plugin: ``{distribution, version, module}``."""
        return {"distribution": self.distribution, "version": self.version, "module": self.module}


class Table(Generic[C]):
    """The components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[C]] = {}

    def add(self, component: C, plugin: str, version: str, distribution: str = "", module: str = "") -> None:
        name = component.name
        if not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an empty name")
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(f"{self.kind} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}")
        self._entries[name] = Entry(component, plugin, version, distribution, module)

    def get(self, name: str) -> C:
        return self.entry(name).component

    def entry(self, name: str) -> Entry[C]:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none)"
            raise PluginError(f"unknown {self.kind} {name!r}; registered: {valid}") from None

    def plugin_of(self, name: str) -> str:
        return self.entry(name).plugin

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[C]]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries


class Registry:
    """Every registered component, built by calling each plugin's hooks one by one."""

    def __init__(self) -> None:
        self.architectures: Table[Architecture] = Table("architecture")
        self.compressors: Table[Compressor] = Table("compressor")
        self.objectives: Table[Objective] = Table("objective")
        self.datasets: Table[Dataset] = Table("dataset")
        self.exporters: Table[Exporter] = Table("exporter")
        self.tasks: Table[Task] = Table("task")
        self._codecs: Table[Codec] | None = None
        self._pm: pluggy.PluginManager | None = None

    @property
    def codecs(self) -> Table[Codec]:
        """The storage codecs, collected from ``register_codecs`` the first time they are asked for.

        Codecs are code, not declarations (torch tensors in, bytes out), so listing the components
        (``vae-automl plugins``) does not import them.
        """
        if self._codecs is None:
            codecs: Table[Codec] = Table("codec")
            if self._pm is not None:
                _collect(self._pm, CODEC_HOOK, codecs, Codec)  # a plugin's error is raised again on the next ask
            self._codecs = codecs
        return self._codecs

    def known_before_training(self, objectives: Iterable[str]) -> tuple[str, ...]:
        """Those of ``objectives`` that do not need training (``Objective.needs_training`` false), in their order:
        what a rung point holds after its validation score (early stopping measures them before training)."""
        return tuple(name for name in objectives if not self.objectives.get(name).needs_training)

    def table(self, kind: str) -> Table[Any]:
        tables: dict[str, Table[Any]] = {
            "architecture": self.architectures,
            "compressor": self.compressors,
            "objective": self.objectives,
            "dataset": self.datasets,
            "exporter": self.exporters,
            "task": self.tasks,
        }
        return tables[kind]

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        registry = cls()
        for kind, (hook_name, base) in HOOK_FOR_KIND.items():
            _collect(pm, hook_name, registry.table(kind), base)
        registry._pm = pm
        return registry

    def codec_map(self) -> dict[str, Codec]:
        """The registered codecs by name, as :mod:`vae_automl.storage` takes them."""
        return {entry.component.name: entry.component for entry in self.codecs.entries()}

    def plugins(self) -> set[str]:
        """The names of every plugin that registered a component."""
        return {e.plugin for kind in HOOK_FOR_KIND for e in self.table(kind).entries()} | {
            e.plugin for e in self.codecs.entries()
        }

    def build_model(self, config: dict[str, Any]) -> VAE:
        """Build an untrained model from a canonical config (``config['architecture']`` picks the builder)."""
        return self.architectures.get(config["architecture"]).build(config)


def _collect(pm: pluggy.PluginManager, hook_name: str, table: Table[Any], base: type) -> None:
    """Call each implementation of a registration hook on its own, so each registration knows its plugin."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin_name = impl.plugin_name
        version = plugin_version(pm, impl.plugin)
        distribution = plugin_distribution(pm, impl.plugin)
        module = getattr(impl.plugin, "__name__", "") or type(impl.plugin).__module__

        def register(component: Any, _p: str = plugin_name, _v: str = version, _d: str = distribution, _m: str = module) -> None:
            if not isinstance(component, base):
                raise PluginError(
                    f"plugin {_p!r} passed {component!r} to {hook_name}; "
                    f"expected an instance of {base.__module__}.{base.__name__}"
                )
            table.add(component, _p, _v, _d, _m)

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin_name!r} raised in {hook_name}: {exc!r}") from exc


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call every implementation of an event hook, naming the plugin of any that raises."""
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        try:
            impl.function(**kwargs)
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r} raised in {hook_name}: {exc!r}") from exc


_default: Registry | None = None
_default_key: tuple[int, frozenset[str]] = (0, frozenset())


def get_registry(extra_plugins: tuple[str, ...] = ()) -> Registry:
    """The process-wide registry, rebuilt whenever the plugin manager or its set of plugins changed."""
    global _default, _default_key
    pm = get_plugin_manager(extra_plugins)
    key = (id(pm), frozenset(name for name, _ in pm.list_name_plugin()))
    if _default is None or key != _default_key:
        _default = Registry.from_plugin_manager(pm)
        _default_key = key
    return _default


def reset_registry() -> None:
    """Forget the cached registry (after plugins were registered or unregistered)."""
    global _default
    _default = None
