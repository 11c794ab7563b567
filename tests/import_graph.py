"""The project's own imports, read from the source (no import runs): which are inside functions, and why.

A function-level import of a project module is worth its cost only when that module
loads something heavy when imported (TensorFlow, Keras, gRPC, a runtime): then
`seqexport --help`, `import exporter.artifact` and the light commands stay fast.
Anywhere else it only hides the call graph. `tests/test_layout.py` holds the project to that.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

from tests import REPO_ROOT

ROOT = REPO_ROOT
PACKAGES = ("exporter", "serving")
# Packages whose import costs seconds or hundreds of MB, or that are optional extras; and numpy (with
# ml_dtypes), which `seqexport --help` does without (a third of its time).
HEAVY = frozenset({
    "tensorflow", "keras", "tensorflow_serving", "grpc", "aiohttp", "matplotlib", "onnx", "onnxruntime",
    "tf2onnx", "ai_edge_litert", "tritonclient", "pytriton", "threadpoolctl", "numpy", "ml_dtypes", "apache_beam",
})


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement: where it is, what it loads, and whether it sits inside a function."""

    module: str            # the importing module
    targets: tuple[str, ...]  # modules it loads: project modules resolved, others by top-level name
    line: int
    end_line: int
    in_function: bool
    node: ast.stmt


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _targets(node: ast.stmt, module: str, is_package: bool, modules: dict[str, Path]) -> tuple[str, ...]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: None if is_package else -1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        top = name.split(".")[0]
        out.append(_resolve(name, modules) if top in PACKAGES else top)
    return tuple(dict.fromkeys(out))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not (
                    isinstance(child, ast.ImportFrom) and child.module == "__future__"):
                yield Import(module=module, targets=_targets(child, module, path.name == "__init__.py", modules),
                             line=child.lineno, end_line=child.end_lineno or child.lineno, in_function=in_function,
                             node=child)
            yield from walk(child, inside)

    yield from walk(tree, False)


def all_imports() -> dict[str, list[Import]]:
    modules = project_modules()
    return {m: list(imports_of(m, p, modules)) for m, p in modules.items()}


def heavy_packages(imports: dict[str, list[Import]]) -> dict[str, frozenset[str]]:
    """`{project module: the HEAVY packages importing it loads}`, through module-level imports and package `__init__`s."""
    loads: dict[str, set[str]] = {m: set() for m in imports}
    changed = True
    while changed:
        changed = False
        for module, found in imports.items():
            before = len(loads[module])
            parts = module.split(".")
            for i in range(1, len(parts)):  # a package's `__init__` runs before its modules
                loads[module] |= loads.get(".".join(parts[:i]), set())
            for imp in found:
                if imp.in_function:
                    continue
                for target in imp.targets:
                    if target in HEAVY:
                        loads[module].add(target)
                    elif target in loads:
                        loads[module] |= loads[target]
            changed |= len(loads[module]) != before
    return {m: frozenset(v) for m, v in loads.items()}


def _loads(target: str, heavy: dict[str, frozenset[str]]) -> frozenset[str]:
    return frozenset({target}) if target in HEAVY else heavy.get(target, frozenset())


def needless_function_imports(imports: dict[str, list[Import]]) -> list[Import]:
    """Function-level imports that load nothing heavy the importing module does not load already.

    An import marked `# lazy: <reason>` on its line is taken at its word.
    """
    heavy = heavy_packages(imports)
    modules = project_modules()
    out = []
    for module, found in imports.items():
        lines = modules[module].read_text().splitlines()
        for imp in found:
            if not imp.in_function or "# lazy:" in " ".join(lines[imp.line - 1:imp.end_line]):
                continue
            loads = frozenset().union(*(_loads(t, heavy) for t in imp.targets))
            if loads <= heavy[module]:
                out.append(imp)
    return out


if __name__ == "__main__":  # python -m tests.import_graph: list them
    graph = all_imports()
    needless = needless_function_imports(graph)
    project_fn = [i for f in graph.values() for i in f if i.in_function and any(t.split(".")[0] in PACKAGES
                                                                                  for t in i.targets)]
    print(f"function-level imports of project modules: {len(project_fn)}; loading nothing heavy: {len(needless)}")
    for imp in needless:
        print(f"  {imp.module}:{imp.line} {', '.join(imp.targets)}")
    sys.exit(1 if needless else 0)
