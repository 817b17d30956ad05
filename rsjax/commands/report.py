"""`rsjax report WORKDIR`: markdown and self-contained HTML report of a run."""

from __future__ import annotations


def run(args) -> int:
  from rsjax import report

  out = report.build(args.workdir, args.out)  # InputError naming the file; rsjax.cli reports it
  print(f"wrote {out['markdown']} and {out['html']} ({out['images']} images)")
  return 0


def register(sub) -> None:
  p = sub.add_parser("report", help="markdown + HTML report (plots, recalls, gallery) of a run")
  p.add_argument("workdir", help="the run directory")
  p.add_argument("--out", default=None, help="output folder (default WORKDIR/report)")
  p.set_defaults(run=run)
