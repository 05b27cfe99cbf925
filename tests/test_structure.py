"""The package's structure, read from its source (no module is imported).

* No import cycle between the parts of ``aspdc_jax``: a part is a subpackage (``data``,
  ``evaluation``, ``inference``, ...) or a top-level module (``images``, ``weights``, ...).
  Every import counts: at module level, inside a function, under ``if TYPE_CHECKING``.
* Only the entry points import the command-line helpers (``aspdc_jax.cli``): the library
  raises exceptions (``aspdc_jax.errors``) and the entry points report them.
* Inference never imports training.
* An installed copy ships no top-level ``configs`` package: the base config lives inside
  ``aspdc_jax``.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import read_configuration

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aspdc_jax"

#: The modules that may import ``aspdc_jax.cli``: the command-line entry points. A
#: package's ``__main__`` (``python -m aspdc_jax.<package>``) is one too.
ENTRY_POINTS = {
    "aspdc_jax.cli",
    "aspdc_jax.inference.cli",
    "aspdc_jax.convert",
    "aspdc_jax.publish",
    "aspdc_jax.export",
    "aspdc_jax.deblur",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """Every ``aspdc_jax`` module ``path`` imports, at any depth of its syntax tree
    (relative imports resolved; ``from pkg import mod`` names ``pkg.mod`` when it is one)."""
    modules = _modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            # `from pkg import mod` imports pkg too, but what it uses is mod.
            found.update(submodules if len(submodules) == len(node.names) else submodules | {base})
    return {m for m in found if m == "aspdc_jax" or m.startswith("aspdc_jax.")}


def _part(module: str) -> str:
    """The part of the package a module belongs to: ``aspdc_jax.<first name>``."""
    return ".".join(module.split(".")[:2])


def _import_graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in _modules().items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_import_scanner_sees_function_level_imports():
    graph = _import_graph()  # protocol imports the data modules inside functions
    assert "aspdc_jax.data.pipeline" in graph["aspdc_jax.evaluation.protocol"]
    assert "aspdc_jax.images" in graph["aspdc_jax.data.imageio"]  # `from aspdc_jax import images`


def _part_graph(witness: dict[tuple[str, str], str] | None = None) -> dict[str, set[str]]:
    """Which part imports which (``witness``, if given, gets one module import per edge)."""
    parts: dict[str, set[str]] = {}
    for module, imported in _import_graph().items():
        for target in imported:
            a, b = _part(module), _part(target)
            if a != b and "aspdc_jax" not in (a, b):
                parts.setdefault(a, set()).add(b)
                if witness is not None:
                    witness.setdefault((a, b), f"{module} -> {target}")
    return parts


def test_the_cycle_finder():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_parts_of_the_package():
    witness: dict[tuple[str, str], str] = {}
    parts = _part_graph(witness)
    cycles = _cycles(parts)
    explained = [[witness[(a, b)] for a in cycle for b in cycle if b in parts.get(a, ())] for cycle in cycles]
    assert not cycles, f"import cycles between parts of aspdc_jax: {explained}"


def test_only_the_entry_points_import_the_cli_helpers():
    offenders = sorted(
        module
        for module, imported in _import_graph().items()
        if "aspdc_jax.cli" in imported and module not in ENTRY_POINTS and not module.endswith(".__main__")
    )
    assert not offenders, (
        f"library modules importing aspdc_jax.cli (raise an aspdc_jax.errors type instead): {offenders}"
    )


def test_inference_never_imports_training():
    """Not even through another part (a deblurring deployment carries no trainer)."""
    parts = _part_graph()
    reached, todo = set(), ["aspdc_jax.inference"]
    while todo:
        part = todo.pop()
        for target in parts.get(part, ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert "aspdc_jax.training" not in reached, sorted(reached)


def test_the_installed_packages_are_aspdc_jax_alone():
    # What `pip install` puts into site-packages: pyproject's packages.find, expanded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools calls its [tool.setuptools] table beta
        packages = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]
    assert "aspdc_jax" in packages and "aspdc_jax.configs" in packages
    assert all(p == "aspdc_jax" or p.startswith("aspdc_jax.") for p in packages), packages
