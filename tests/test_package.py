"""The package's structure: no import cycle between its modules, and importing it changes nothing in RecBole."""

import ast
import graphlib
import os
import pkgutil

import recbole_elastic

from tests.helpers import run_python_reporting

PACKAGE_DIR = os.path.dirname(recbole_elastic.__file__)


def package_modules() -> dict:
    """Module name -> source path, for every module of the package (``__init__`` files as the package)."""
    modules = {"recbole_elastic": os.path.join(PACKAGE_DIR, "__init__.py")}
    for info in pkgutil.walk_packages([PACKAGE_DIR], prefix="recbole_elastic."):
        path = os.path.join(PACKAGE_DIR, *info.name.split(".")[1:])
        modules[info.name] = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
    return modules


def import_graph() -> dict:
    """Module -> the package modules it imports anywhere in its source, function bodies included."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import module` imports the module; `from module import name`, the module.
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
                imported.update(submodules or {node.module})
        # Every module imports its parent packages first, by Python's rules: those edges are not the code's.
        ancestors = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
        graph[name] = {module for module in imported if module in modules and module not in ancestors | {name}}
    return graph


def test_import_graph_has_no_cycle():
    order = list(graphlib.TopologicalSorter(import_graph()).static_order())  # raises CycleError on a cycle
    assert "recbole_elastic.quick_start" in order and "recbole_elastic.trainer" in order


IMPORT_SCRIPT = """
import json, sys
import numpy
from recbole.config import Config
recbole_hook = Config._update_internal_config_dict
had_float_ = "float_" in numpy.__dict__
for name in json.loads(sys.argv[1]):
    __import__(name)
print("REPORT " + json.dumps({
    "config_hook_untouched": Config._update_internal_config_dict is recbole_hook,
    "numpy_untouched": ("float_" in numpy.__dict__) == had_float_,
}))
"""


def test_every_module_imports_in_dependency_order_without_touching_recbole(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    report = run_python_reporting(IMPORT_SCRIPT, json.dumps(order))
    assert report == {"config_hook_untouched": True, "numpy_untouched": True}
