import importlib.metadata
import sys
import textwrap

import pytest

from privbench import registry
from privbench.errors import PrivbenchError
from privbench.registry import Registry, UnknownNameError


def test_builtins_are_registered_with_metadata():
    assert "mni-tissue" in registry.list_tasks()
    assert {"none", "mixup"} <= set(registry.list_defenses())
    assert {"bss", "reid"} <= set(registry.list_attacks())
    entry = registry.DEFENSES.get("none")
    assert entry.description and entry.paper and entry.source == "privbench"


def test_wildcard_filters():
    reg = Registry("toy", "privbench.attacks", "privbench.toy-group-nobody-uses")
    for name in ("alpha-one", "alpha-two", "beta"):
        reg.register(name, description=name)(lambda name=name: name)
    assert reg.names() == ["alpha-one", "alpha-two", "beta"]
    assert reg.names("alpha-*") == ["alpha-one", "alpha-two"]
    assert reg.names(["beta", "*-two"]) == ["alpha-two", "beta"]
    assert reg.names("gamma*") == []
    assert reg.create("beta") == "beta"


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match=r"unknown defense 'nnoe'; did you mean 'none'\?"):
        registry.create_defense("nnoe")
    with pytest.raises(PrivbenchError, match="available: .*mni-tissue"):
        registry.TASKS.get("zzzz")


def test_duplicate_registration_is_refused():
    reg = Registry("toy", "privbench.attacks", "privbench.toy-group-nobody-uses")
    reg.register("x", description="first")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x", description="second")(lambda: 2)


def test_one_definition_imported_twice_is_one_registration(tmp_path, monkeypatch):
    """A plugin installed in editable mode and also reached from its source tree (or reloaded) is
    imported twice, giving two class objects of one definition: that is not a second component."""
    reg = Registry("toy", "privbench.attacks", "privbench.toy-group-nobody-uses")
    (tmp_path / "twice_imported.py").write_text("class Toy:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = importlib.import_module("twice_imported")
    reg.register("toy", description="first import")(first.Toy)
    del sys.modules["twice_imported"]
    second = importlib.import_module("twice_imported")
    assert second.Toy is not first.Toy
    reg.register("toy", description="second import")(second.Toy)
    assert reg.get("toy").factory is second.Toy
    monkeypatch.delitem(sys.modules, "twice_imported")


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "toy_plugin.py").write_text(textwrap.dedent('''
        from privbench.registry import register_attack

        @register_attack("toy-attack", description="A toy attack", paper="nobody", requires=("x",))
        def toy_attack():
            return "built"

        def bare_factory():
            """Registered through its entry point name."""
            return "bare"
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    group = "privbench.toy-plugins"
    eps = [importlib.metadata.EntryPoint("toy-attack", "toy_plugin", group),
           importlib.metadata.EntryPoint("bare", "toy_plugin:bare_factory", group),
           importlib.metadata.EntryPoint("broken", "no_such_module_xyz", group)]
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [ep for ep in eps if ep.group == group])
    reg = Registry("attack", "privbench.attacks", group)
    monkeypatch.setattr(registry, "ATTACKS", reg)
    monkeypatch.setattr(registry, "register_attack", reg.register)
    with pytest.warns(UserWarning, match="could not load attack plugin 'broken'"):
        names = reg.names()
    assert names == ["bare", "toy-attack"]
    assert reg.create("toy-attack") == "built"
    assert reg.get("toy-attack").requires == ("x",)
    assert reg.get("toy-attack").source == "toy_plugin"
    assert reg.get("bare").description == "Registered through its entry point name."
    sys.modules.pop("toy_plugin", None)
