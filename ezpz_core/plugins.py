"""Finding, checking and registering plugins: one manager per Trainer.

Entry points in the ``ezpz`` group are loaded one by one, each inside its own
try/except, so a broken plugin is reported (with its distribution and version)
instead of taking every command down. Order of registration, and so of calls
(pluggy calls last-registered first): ezpz's generic fallbacks, the built-ins
shipped in the ``ezpz`` distribution, third-party plugins sorted by
distribution and name, then plugin objects passed to the Trainer.

Environment controls:

- ``EZPZ_DISABLE_PLUGIN_AUTOLOAD=1`` loads no third-party entry point.
- ``EZPZ_LOAD_PLUGINS=a,b`` loads only these third-party plugins (entry-point
  or distribution names; empty loads none).
- ``EZPZ_BLOCK_PLUGINS=a,b`` (or ``--block``) skips plugins, built-ins included.

A hook that raises during a run is traced back to its plugin only after the
fact, from the traceback (``Plugins.blame``), so hook calls carry no
bookkeeping while nothing fails.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from types import CodeType, SimpleNamespace, TracebackType
from typing import Any

import attrs
import pluggy

from ezpz_core import hookspecs
from ezpz_core.errors import EzpzError, PluginError
from ezpz_core.types import ModelSpec

log = logging.getLogger("ezpz")

GROUP = "ezpz"
BUILTIN_DIST = "ezpz"
#: The generic fallbacks' plugin name: never blamed, since they run the user's own model.
DEFAULTS = "ezpz.defaults"
#: Set on a wrapper that only times a hook implementation, so blame looks through it.
TIMING_WRAPPER = "__ezpz_timing_wrapper__"


@attrs.frozen
class PluginInfo:
    """Where a registered plugin came from, for listings and error messages."""

    name: str
    plugin: object
    distribution: str | None = None
    version: str | None = None
    source: str = ""

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DIST

    @property
    def label(self) -> str:
        """``'name' (dist 1.0)``: how messages name a plugin."""
        dist = f"{self.distribution} {self.version}" if self.distribution else "passed in code"
        return f"plugin '{self.name}' ({dist})"

    @property
    def fix(self) -> str:
        """How to run without this plugin, for the end of error messages."""
        if self.distribution is None:
            return "remove it from Trainer(plugins=...)"
        return f"disable it with --block {self.name} or EZPZ_BLOCK_PLUGINS={self.name}"


def _positional(function: Any, picks: tuple[int, ...], arity: int) -> Any:
    """``function`` called with the hook's positional arguments it names, in its own order."""
    if picks == tuple(range(arity)):
        return function
    if picks == tuple(range(len(picks))):
        count = len(picks)
        return lambda *args: function(*args[:count])
    return lambda *args: function(*[args[i] for i in picks])


class PluginHookError(PluginError):
    """A plugin's hook raised during a run: one line naming the plugin, the hook and the fix.

    ``error`` is the original exception, traceback included, for the plugin's author.
    """

    def __init__(self, info: PluginInfo, hook: str, error: BaseException) -> None:
        self.plugin = info
        self.hook = hook
        self.error = error
        text = str(error).strip()
        what = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
        super().__init__(f"{info.label} raised in hook '{hook}': {what}; {info.fix}")


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or registered, as one line."""

    name: str
    distribution: str | None
    version: str | None
    message: str


def _split_env(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _code_objects(function: Any) -> list[CodeType]:
    """The code of ``function`` and of what it wraps: any of them may appear in a traceback."""
    found = []
    for _ in range(32):  # a __wrapped__ cycle must not hang error reporting
        if function is None:
            break
        code = getattr(function, "__code__", None)
        if isinstance(code, CodeType) and not getattr(function, TIMING_WRAPPER, False):
            found.append(code)
        function = getattr(function, "__wrapped__", None)
    return found


def _frames(tb: TracebackType | None) -> list[Any]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _describe_source(obj: object) -> str:
    target = obj if inspect.ismodule(obj) else type(obj)
    try:
        return inspect.getsourcefile(target) or repr(target)  # type: ignore[arg-type]
    except TypeError:
        return repr(target)


class Plugins:
    """A pluggy manager with the plugins one Trainer (or one CLI command) uses."""

    def __init__(
        self,
        extra: Iterable[object] = (),
        *,
        autoload: bool | None = None,
        block: Iterable[str] = (),
        allow: Sequence[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self.models: dict[str, tuple[ModelSpec, PluginInfo]] = {}
        self.blocked = set(block) | set(_split_env("EZPZ_BLOCK_PLUGINS") or ())
        if autoload is None:
            autoload = os.environ.get("EZPZ_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        self._allow = allow if allow is not None else _split_env("EZPZ_LOAD_PLUGINS")

        from ezpz_core import defaults

        self._register(PluginInfo(DEFAULTS, defaults, source=_describe_source(defaults)))
        self._load_entry_points(autoload)
        for obj in extra:
            info = PluginInfo(self._name_for(obj), obj, source=_describe_source(obj))
            self._register(info, raise_errors=True)
        self._collect_models()

    # --- loading -------------------------------------------------------------

    def _wanted(self, ep: metadata.EntryPoint, dist: str, autoload: bool) -> bool:
        if ep.name in self.blocked or dist in self.blocked:
            return False
        if dist == BUILTIN_DIST:
            return True
        if not autoload:
            return False
        return self._allow is None or ep.name in self._allow or dist in self._allow

    def _load_entry_points(self, autoload: bool) -> None:
        found = []
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else None
            found.append((dist != BUILTIN_DIST, dist, ep.name, version, ep))
        seen: set[str] = set()
        for _, dist, name, version, ep in sorted(found, key=lambda item: item[:3]):
            if name in seen or not self._wanted(ep, dist, autoload):
                continue
            seen.add(name)
            try:
                obj = ep.load()
                plugin = obj() if isinstance(obj, type) else obj
            except Exception as exc:  # any import-time failure of a plugin is the plugin's
                self._fail(name, dist, version, f"failed to load ({type(exc).__name__}: {exc})")
                continue
            self._register(PluginInfo(name, plugin, dist, version, ep.value))

    def _fail(self, name: str, dist: str | None, version: str | None, why: str) -> None:
        info = PluginInfo(name, None, dist, version)
        who = info.label if dist else f"plugin '{name}'"
        self.failures.append(PluginFailure(name, dist, version, f"{who} {why}; {info.fix}"))

    def _name_for(self, obj: object) -> str:
        base = getattr(obj, "__name__", None) if inspect.ismodule(obj) else None
        base = base or getattr(obj, "name", None) or type(obj).__name__
        name, n = str(base), 1
        while name in self.infos:
            n += 1
            name = f"{base}-{n}"
        return name

    def _register(self, info: PluginInfo, raise_errors: bool = False) -> None:
        try:
            self._check_hook_names(info)
            self.pm.register(info.plugin, name=info.name)
        except (PluginError, pluggy.PluginValidationError, ValueError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, pluggy.PluginValidationError):
                why = self._explain_validation(info, why)
            if raise_errors:
                raise PluginError(f"{info.label} {why}") from None
            self._fail(info.name, info.distribution, info.version, why)
            return
        self.infos[info.name] = info

    def _check_hook_names(self, info: PluginInfo) -> None:
        known = set(hookspecs.hook_names())
        for attr in dir(info.plugin):
            if self.pm.parse_hookimpl_opts(info.plugin, attr) is None or attr in known:
                continue
            close = difflib.get_close_matches(attr, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PluginError(f"implements unknown hook '{attr}'{hint}")

    def _explain_validation(self, info: PluginInfo, message: str) -> str:
        for attr in dir(info.plugin):
            opts = self.pm.parse_hookimpl_opts(info.plugin, attr)
            if opts is None:
                continue
            spec = getattr(hookspecs, attr)
            allowed = set(inspect.signature(spec).parameters)
            params = inspect.signature(getattr(info.plugin, attr)).parameters
            extra = [p for p in params if p not in allowed and p != "self"]
            if extra:
                return (
                    f"hook '{attr}' takes argument '{extra[0]}' that the hook does not provide "
                    f"(it provides: {', '.join(sorted(allowed))})"
                )
        return message

    def _collect_models(self) -> None:
        by_plugin = {id(info.plugin): info for info in self.infos.values()}
        for impl in self.pm.hook.register_models.get_hookimpls():  # registration order
            info = by_plugin[id(impl.plugin)]

            def register(spec: ModelSpec, _info: PluginInfo = info) -> None:
                if not isinstance(spec, ModelSpec):
                    raise PluginError(f"register() expects a ModelSpec, got {type(spec).__name__}")
                taken = self.models.get(spec.name)
                if taken is not None and taken[1].name != _info.name:
                    raise PluginError(
                        f"registers model '{spec.name}', already registered by {taken[1].label}"
                    )
                self.models[spec.name] = (spec, _info)

            try:
                impl.function(register=register)
            except PluginError as exc:
                self._fail(info.name, info.distribution, info.version, str(exc))
            except Exception as exc:  # a plugin's own bug must not hide the other models
                self._fail(info.name, info.distribution, info.version, f"register_models: {exc}")

    def add_commands(self, subparsers: Any) -> None:
        """Let each plugin add CLI subcommands; one that fails is reported, not fatal."""
        by_plugin = {id(info.plugin): info for info in self.infos.values()}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = by_plugin[id(impl.plugin)]
            try:
                impl.function(subparsers=subparsers)
            except Exception as exc:  # a plugin's own bug must not take the CLI down
                self._fail(info.name, info.distribution, info.version,
                           f"register_commands: {type(exc).__name__}: {exc}")

    # --- use -----------------------------------------------------------------

    def raise_for_failures(self) -> None:
        """Refuse to train with a broken plugin: its hooks would silently not run."""
        if self.failures:
            raise PluginError(self.failures[0].message)

    def spec(self, model_name: str) -> tuple[ModelSpec, PluginInfo]:
        try:
            return self.models[model_name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise PluginError(
                f"unknown model '{model_name}' (available: {known}); `ezpz models` lists them"
            ) from None

    def hooks(self, model_name: str | None) -> SimpleNamespace:
        """The hook callers for one Trainer: plugins of other models are left out."""
        owner = self.models[model_name][1].plugin if model_name in self.models else None
        others = {info.plugin for _, info in self.models.values() if info.plugin is not owner}
        callers: dict[str, Any] = {}
        for name in hookspecs.hook_names():
            caller = getattr(self.pm.hook, name)
            if name not in hookspecs.GLOBAL_HOOKS and others:
                caller = self.pm.subset_hook_caller(name, remove_plugins=others)
            callers[name] = caller
        return SimpleNamespace(**callers)

    def culprit(self, error: BaseException) -> tuple[PluginInfo, str] | None:
        """The plugin and hook whose implementation raised ``error``, read from its traceback.

        The innermost hook implementation on the stack is blamed, so a plugin
        that calls into another (``trainer.evaluate()`` from ``on_step_end``)
        does not take the blame for the other's bug. ezpz's generic fallbacks
        are never blamed: an error there comes from the user's model or data.
        Costs nothing until called, which happens only once a run has failed.
        """
        owners: dict[CodeType, list[tuple[PluginInfo, str]]] = {}
        for info in self.infos.values():
            if info.name == DEFAULTS:
                continue
            for caller in self.pm.get_hookcallers(info.plugin) or []:
                for impl in caller.get_hookimpls():
                    if impl.plugin is info.plugin:
                        for code in _code_objects(impl.function):
                            owners.setdefault(code, []).append((info, caller.name))
        found = None
        for frame in _frames(error.__traceback__):
            candidates = owners.get(frame.f_code, [])
            if len(candidates) > 1:  # one class, several instances: the frame's self decides
                this = frame.f_locals.get("self")
                candidates = [c for c in candidates if c[0].plugin is this] or candidates[:1]
            if candidates:
                found = candidates[0]
        return found

    def blame(self, error: BaseException) -> PluginHookError | None:
        """``error`` restated as one line naming its plugin and hook, or None if no plugin's.

        An ``EzpzError`` is left alone: a plugin raises one on purpose, with a
        message meant for the user already.
        """
        if isinstance(error, EzpzError) or not isinstance(error, Exception):
            return None
        found = self.culprit(error)
        if found is None:
            return None
        blamed = PluginHookError(found[0], found[1], error)
        log.debug("%s", blamed, exc_info=error)  # the traceback, for the plugin's author
        return blamed

    @staticmethod
    def direct(caller: Any) -> Any:
        """A hook caller without pluggy's per-call machinery, for the per-step hooks.

        Called with the hook's arguments positionally, in the spec's order. Same
        semantics (reverse registration order honouring tryfirst/trylast, first
        non-None result for ``firstresult`` hooks, each implementation given only
        the arguments it names), resolved once instead of on every step. Falls
        back to a keyword call of ``caller`` itself when wrappers are involved.
        """
        impls = caller.get_hookimpls()
        order = tuple(caller.spec.argnames) if caller.spec is not None else ()
        if caller.spec is None or any(impl.hookwrapper or impl.wrapper for impl in impls):
            return lambda *args: caller(**dict(zip(order, args, strict=True)))
        bound = [_positional(impl.function, tuple(order.index(n) for n in impl.argnames),
                             len(order)) for impl in reversed(impls)]
        if caller.spec.opts.get("firstresult"):
            if len(bound) == 1:
                return bound[0]

            def first(*args: Any) -> Any:
                for function in bound:
                    result = function(*args)
                    if result is not None:
                        return result
                return None

            return first

        def each(*args: Any) -> list[Any]:
            results = [function(*args) for function in bound]
            return [result for result in results if result is not None]

        return each

    def implemented_hooks(self, info: PluginInfo) -> list[str]:
        callers = self.pm.get_hookcallers(info.plugin) or []
        return sorted(caller.name for caller in callers)

    def describe(self) -> list[Mapping[str, Any]]:
        """One record per plugin (loaded or failed), for ``ezpz plugins``.

        ``source`` is the entry point (``module:attr``) and ``path`` the file it
        was loaded from, to tell which environment a plugin came from. A plugin
        that loaded but then failed (a model name already taken) is one record
        with its ``error`` set.
        """
        errors: dict[str, str] = {}
        for failure in self.failures:
            errors.setdefault(failure.name, failure.message)
        rows: list[Mapping[str, Any]] = []
        for info in self.infos.values():
            if info.name == DEFAULTS:
                continue
            models = sorted(n for n, (_, owner) in self.models.items() if owner.name == info.name)
            rows.append(
                {
                    "name": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "builtin": info.builtin,
                    "hooks": self.implemented_hooks(info),
                    "models": models,
                    "source": info.source,
                    "path": _describe_source(info.plugin),
                    "error": errors.pop(info.name, None),
                }
            )
        for failure in self.failures:
            message = errors.pop(failure.name, None)
            if message is None:
                continue
            rows.append(
                {
                    "name": failure.name,
                    "distribution": failure.distribution,
                    "version": failure.version,
                    "builtin": failure.distribution == BUILTIN_DIST,
                    "hooks": [],
                    "models": [],
                    "source": "",
                    "path": "",
                    "error": message,
                }
            )
        return rows
