#!/usr/bin/env python3
"""Print the import graph of the ``vae_automl`` package and its cycles; exit 1 if there is a cycle.

An arrow ``a -> b`` is an import of module ``b`` that runs when ``a`` is
imported or when one of its functions runs: imports under
``if TYPE_CHECKING:`` are left out (they never run). A package's own
``__init__`` is not counted as imported by ``from vae_automl.x import y``.

With ``--reasons`` it also lists in-function imports that lack a comment
saying why they are deferred (on the line, or on the line above), and
exits 1 if there is one.

Usage: python tools/import_graph.py [--root vae_automl] [--verbose] [--reasons]
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXTERNAL = "external:"
"""Prefix of in-function imports of other packages (checked for a reason, not part of the graph)."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, source: str, modules: set[str], package: str) -> list[tuple[str, int, bool]]:
    found: list[tuple[str, int, bool]] = []

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, in_function)
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == package and (target := resolve(alias.name)):
                        found.append((target, child.lineno, in_function))
                    elif in_function:
                        found.append((EXTERNAL + alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.split(".")[0] != package:
                    if in_function:
                        found.append((EXTERNAL + child.module, child.lineno, in_function))
                    continue
                for alias in child.names:
                    full = f"{child.module}.{alias.name}"
                    target = full if full in modules else resolve(child.module)
                    if target:
                        found.append((target, child.lineno, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def collect(root: Path) -> tuple[set[str], list[Import], dict[str, list[str]]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    package = root.name
    imports: list[Import] = []
    sources: dict[str, list[str]] = {}
    for name, path in files.items():
        text = path.read_text()
        sources[name] = text.splitlines()
        for target, line, in_function in _imports(ast.parse(text), name, modules, package):
            if target != name and not name.startswith(target + "."):
                imports.append(Import(name, target, line, in_function))
    return modules, imports, sources


def cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.target in graph:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _comment(line: str) -> bool:
    """Whether ``line`` is a comment line or ends with one (a ``#`` inside a string does not count)."""
    stripped = line.strip()
    return stripped.startswith("#") or "  # " in line


def unexplained(imports: list[Import], sources: dict[str, list[str]]) -> list[Import]:
    """In-function imports without a reason: a comment on their line, or above their block of imports."""
    missing: dict[tuple[str, int], Import] = {}
    for imp in imports:
        if not imp.in_function:
            continue
        lines = sources[imp.source]
        if _comment(lines[imp.line - 1]):
            continue
        above = imp.line - 2
        while above >= 0 and lines[above].strip().startswith(("from ", "import ")) and not _comment(lines[above]):
            above -= 1
        if above >= 0 and _comment(lines[above]):
            continue
        missing.setdefault((imp.source, imp.line), imp)
    return list(missing.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "vae_automl")
    parser.add_argument("--verbose", action="store_true", help="print every arrow")
    parser.add_argument("--reasons", action="store_true", help="fail on in-function imports without a reason comment")
    args = parser.parse_args(argv)
    modules, imports, sources = collect(args.root.resolve())
    internal = [i for i in imports if not i.target.startswith(EXTERNAL)]
    arrows = {(i.source, i.target) for i in internal}
    lazy = [i for i in internal if i.in_function]
    lazy_external = [i for i in imports if i.target.startswith(EXTERNAL)]
    if args.verbose:
        for source, target in sorted(arrows):
            print(f"{source} -> {target}")
    found = cycles(modules, internal)
    print(f"{len(modules)} modules, {len(arrows)} import arrows; in-function imports: {len(lazy)} of the package, "
          f"{len(lazy_external)} of other packages")
    for component in found:
        print("cycle: " + " <-> ".join(component))
        for imp in sorted(internal, key=lambda i: (i.source, i.line)):
            if imp.source in component and imp.target in component:
                print(f"    {imp.source}:{imp.line} imports {imp.target}" + (" (in a function)" if imp.in_function else ""))
    status = 1 if found else 0
    if args.reasons:
        for imp in unexplained(imports, sources):
            print(f"in-function import without a reason: {imp.source}:{imp.line} imports {imp.target.removeprefix(EXTERNAL)}")
            status = 1
    print(f"{len(found)} cycles")
    return status


if __name__ == "__main__":
    sys.exit(main())
