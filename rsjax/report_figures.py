"""Drawing primitives shared by the report's sections (rsjax/report.py and the report_*.py
modules): matplotlib without a display, figures as PNG bytes, tables as markdown and HTML."""

from __future__ import annotations

import html
import io


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display: files only)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def png(fig) -> bytes:
  """A matplotlib figure as PNG bytes; the figure is closed."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  pyplot().close(fig)
  return buf.getvalue()


def md_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
  head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
