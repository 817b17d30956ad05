"""rsjax's import graph read from the source (no module is imported), and its cycles.

Every `import` / `from ... import` counts, at module level and inside functions alike: a function-
level import only hides a cycle from the interpreter, not from the reader. `from pkg import name`
points at pkg/name.py when that file exists, else at pkg itself. Importing a submodule also runs
its package's __init__.py; that implicit edge is left out (it is no design decision).
"""

from __future__ import annotations

import ast
import contextlib
import gc
import pathlib


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _parse(path: pathlib.Path) -> ast.Module:
  """ast.parse, sheltered from CPython 3.11's spurious "SystemError: AST constructor recursion
  depth mismatch" (python/cpython gh-106905; seen here once in a full run, when the late-collected
  orbax coroutines of earlier tests were finalized during parsing): import_graph pauses the
  garbage collector while it parses, and that one error is retried once."""
  source = path.read_text()
  try:
    return ast.parse(source, str(path))
  except SystemError as e:
    if "recursion depth mismatch" not in str(e):
      raise
    return ast.parse(source, str(path))


@contextlib.contextmanager
def _gc_paused():
  """One collection, then none while parsing: a collection per file cost a minute in a full run,
  whose heap holds every earlier test's JAX objects."""
  gc.collect()
  gc.disable()
  try:
    yield
  finally:
    gc.enable()


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
  """{module: modules of the package `root` it imports}, e.g. {'rsjax.train.loop': {...}}."""
  files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
  package = root.name
  graph: dict[str, set[str]] = {name: set() for name in files}
  with _gc_paused():
    trees = {name: _parse(path) for name, path in files.items()}
  for name, path in files.items():
    is_package = path.name == "__init__.py"
    for node in ast.walk(trees[name]):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
          anchor = name.split(".") if is_package else name.split(".")[:-1]
          anchor = anchor[: len(anchor) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                   for alias in node.names]
      for target in targets:
        while target and target not in files:  # `import a.b.c` of a name inside a module
          target = target.rpartition(".")[0]
        if target.startswith(package) and target and target != name:
          graph[name].add(target)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
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

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found
