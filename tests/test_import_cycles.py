"""The package imports one way (docs/architecture.md): no import cycle, at any level."""

import pathlib
import textwrap

from import_graph import cycles, import_graph

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rsjax"


def test_rsjax_has_no_import_cycle():
  graph = import_graph(ROOT)
  assert len(graph) > 50  # the whole package was read
  found = cycles(graph)
  assert not found, "import cycles (module -> imports): " + "; ".join(
      " / ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found)


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text(textwrap.dedent("""
      def late():
        from pkg import c  # function level: the interpreter never sees a cycle
  """))
  (pkg / "c.py").write_text("from . import a\nimport numpy\n")
  (pkg / "d.py").write_text("import pkg.a\n")  # imports into the cycle, is not part of it
  graph = import_graph(pkg)
  assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
  assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
  (pkg / "sub" / "b.py").write_text("def late():\n  pass\n")
  assert cycles(import_graph(pkg)) == []
