"""Plugin discovery through entry points, and what a broken plugin does (and does not) break."""

from __future__ import annotations

import pytest

import ezpz
from ezpz_core.errors import PluginError
from ezpz_core.plugins import Plugins

GOOD = """
import ezpz

@ezpz.hookimpl
def register_models(register):
    register(ezpz.ModelSpec(name="toy", description="a toy"))

@ezpz.hookimpl
def on_log(step):
    pass
"""


def test_builtins_are_discovered_through_the_ezpz_entry_point_group():
    plugins = Plugins()
    for name in ("mnist", "console", "history"):
        info = plugins.infos[name]
        assert info.distribution == "ezpz" and info.builtin
    assert plugins.models["mnist"][1].name == "mnist"
    hooks = plugins.implemented_hooks(plugins.infos["mnist"])
    assert {"register_models", "build_data", "build_model"} <= set(hooks)


def test_a_third_party_distribution_is_loaded_and_its_model_registered(install_plugin):
    install_plugin("ezpz-toy", "1.2.3", {"toy": "toy_plugin"}, {"toy_plugin": GOOD})
    plugins = Plugins()
    info = plugins.infos["toy"]
    assert (info.distribution, info.version) == ("ezpz-toy", "1.2.3")
    assert plugins.models["toy"][1].name == "toy"
    assert "on_log" in plugins.implemented_hooks(info)


def test_disable_autoload_keeps_builtins_but_skips_third_party(install_plugin, monkeypatch):
    install_plugin("ezpz-toy", "1.2.3", {"toy": "toy_plugin"}, {"toy_plugin": GOOD})
    monkeypatch.setenv("EZPZ_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = Plugins()
    assert "toy" not in plugins.infos and "mnist" in plugins.infos


def test_allow_list_and_block(install_plugin, monkeypatch):
    install_plugin("ezpz-toy", "1.2.3", {"toy": "toy_plugin"}, {"toy_plugin": GOOD})
    monkeypatch.setenv("EZPZ_LOAD_PLUGINS", "something-else")
    assert "toy" not in Plugins().infos
    monkeypatch.setenv("EZPZ_LOAD_PLUGINS", "ezpz-toy")
    assert "toy" in Plugins().infos
    monkeypatch.delenv("EZPZ_LOAD_PLUGINS")
    blocked = Plugins(block=["toy", "console"])
    assert "toy" not in blocked.infos and "console" not in blocked.infos
    assert "history" in blocked.infos


def test_a_plugin_that_fails_to_import_is_reported_and_others_still_load(install_plugin):
    install_plugin("ezpz-broken", "0.0.1", {"broken": "broken_plugin"},
                   {"broken_plugin": "import not_a_real_module_xyz\n"})
    plugins = Plugins()
    assert "mnist" in plugins.models and "broken" not in plugins.infos
    [failure] = plugins.failures
    assert "ezpz-broken 0.0.1" in failure.message
    assert "not_a_real_module_xyz" in failure.message
    assert "--block broken" in failure.message
    assert "\n" not in failure.message
    with pytest.raises(PluginError, match="ezpz-broken"):
        plugins.raise_for_failures()


def test_a_misspelt_hook_is_an_error_naming_the_plugin_and_the_fix(install_plugin):
    source = "import ezpz\n\n@ezpz.hookimpl\ndef on_trian_end(trainer):\n    pass\n"
    install_plugin("ezpz-typo", "2.0", {"typo": "typo_plugin"}, {"typo_plugin": source})
    [failure] = Plugins().failures
    assert "ezpz-typo 2.0" in failure.message
    assert "unknown hook 'on_trian_end'" in failure.message
    assert "did you mean 'on_train_end'" in failure.message


def test_a_hook_with_an_argument_the_spec_lacks_is_an_error():
    class Wrong:
        @ezpz.hookimpl
        def on_log(self, step, loss):
            pass

    with pytest.raises(PluginError, match="takes argument 'loss'"):
        Plugins([Wrong()])


def test_two_plugins_registering_one_model_name_is_an_error_naming_both(install_plugin):
    clash = GOOD.replace('name="toy"', 'name="mnist"')
    install_plugin("ezpz-clash", "3.1", {"clash": "clash_plugin"}, {"clash_plugin": clash})
    plugins = Plugins()
    [failure] = plugins.failures
    assert "ezpz-clash 3.1" in failure.message
    assert "already registered by plugin 'mnist' (ezpz " in failure.message
    assert plugins.models["mnist"][1].name == "mnist"


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(PluginError, match=r"unknown model 'nope' \(available: .*mnist"):
        Plugins().spec("nope")
