"""Reports from a run's files: markdown plus one self-contained HTML page with PNG plots.

Reads WORKDIR/metrics.jsonl (training curves), eval.json / step0_eval.json (the trainer's recall
table), eval_full.json (`rsjax eval`: per-subset recalls, hashing with PR curves, zero-shot) and
eval_gallery.npz (text queries and their top images). Writes WORKDIR/report/report.md with the PNGs
beside it and WORKDIR/report/report.html with every image inlined as base64 PNG.

The HTML carries a small script that sets data-images-loaded on <body> to the number of images
once every <img> has decoded (naturalWidth > 0): a headless browser test reads it back.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os

import numpy as np

from rsjax import report_efficiency, report_gallery, report_robustness
from rsjax.errors import InputError
from rsjax.report_figures import html_table as _html_table
from rsjax.report_figures import md_table as _table
from rsjax.report_figures import png as _png
from rsjax.report_figures import pyplot as _pyplot

RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
HASH_KEYS = ("map@20", "map@100", "map@all", "p@20", "p@100", "p_r2")


def _read_json(path: str):
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    try:
      value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise InputError(f"{path}: not valid JSON ({e}); rerun the command that wrote it "
                       "(rsjax train / rsjax eval) or move the file away") from None
  if not isinstance(value, dict):
    raise InputError(f"{path}: holds a JSON {type(value).__name__}, not the object rsjax writes; "
                     "rerun the command that wrote it (rsjax train / rsjax eval)")
  return value


@contextlib.contextmanager
def _reading(*paths: str):
  """Turns a missing key or a wrong type in a run file into an InputError naming the file(s)."""
  try:
    yield
  except (KeyError, TypeError, IndexError, AttributeError) as e:
    raise InputError(f"{' / '.join(paths)}: not as rsjax writes it ({type(e).__name__}: {e}); "
                     "rerun the command that wrote it (rsjax train / rsjax eval)") from e


def read_metrics(path: str) -> list[dict]:
  """metrics.jsonl rows; a line that is not JSON is reported with its number."""
  rows = []
  if not os.path.isfile(path):
    return rows
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise InputError(f"{path}:{n}: not valid JSON ({e.msg}); fix or delete that line") from None
        if not isinstance(row, dict):
          raise InputError(f"{path}:{n}: a JSON {type(row).__name__}, not a metrics object; fix "
                           "or delete that line")
        rows.append(row)
  return rows


def training_curves(rows: list[dict]) -> bytes | None:
  """Loss (and learning rate) against step; validation mR where it was logged."""
  train = [r for r in rows if "loss" in r]
  val = [r for r in rows if "val_mR" in r]
  if not train and not val:
    return None
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 6, 3.5), squeeze=False)
  ax = axes[0, 0]
  if train:
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all("lr" in r for r in train):
      lr_ax = ax.twinx()
      lr_ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:gray",
                 linestyle="--", label="learning rate")
      lr_ax.set_ylabel("learning rate")
    ax.set_title("training loss")
  if val:
    ax = axes[0, 1]
    ax.plot([r["step"] for r in val], [r["val_mR"] for r in val], marker="o", color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel("val mR (%)")
    ax.set_title("validation mR")
  return _png(fig)


def pr_curves(curves: dict[str, dict]) -> bytes | None:
  """{label: {'precision': [...], 'recall': [...]}} -> one precision-recall plot."""
  if not curves:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 4))
  for label, c in curves.items():
    ax.plot(c["recall"], c["precision"], marker=".", label=label)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_title("Hamming ranking: precision-recall by radius")
  ax.legend(fontsize=8)
  return _png(fig)


def collect(workdir: str) -> dict:
  """Everything the report shows, read from the run's files."""
  gallery_path = os.path.join(workdir, "eval_gallery.npz")
  gallery = None
  if os.path.isfile(gallery_path):
    try:
      with np.load(gallery_path, allow_pickle=False) as z:
        gallery = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001  zipfile, pickle and format errors alike: a bad file
      raise InputError(f"{gallery_path}: not a readable .npz gallery ({type(e).__name__}: {e}); "
                       "rerun `rsjax eval` to write it again") from None
    missing = [k for k in ("captions", "images", "hit", "scores") if k not in gallery]
    if missing:
      raise InputError(f"{gallery_path}: no array(s) {missing}; rerun `rsjax eval` to write it "
                       "again")
  return {"metrics": read_metrics(os.path.join(workdir, "metrics.jsonl")),
          "eval": _read_json(os.path.join(workdir, "eval.json")),
          "full": _read_json(os.path.join(workdir, "eval_full.json")),
          "gallery": gallery}


def recall_rows(data: dict) -> list[list[str]]:
  rows = []
  ev = data["eval"]
  if ev:
    if "step0" in ev:
      rows.append(["step 0 (untrained)", "trainer eval"] + [f"{ev['step0'][k]:.2f}" for k in RECALL_KEYS])
    rows.append([f"step {ev.get('step', '?')}", "trainer eval"] + [f"{ev[k]:.2f}" for k in RECALL_KEYS])
  full = data["full"]
  if full:
    for name, r in full["splits"].items():
      rows.append([f"step {full['step']}", name] + [f"{r['retrieval'][k]:.2f}" for k in RECALL_KEYS])
  return rows


def hashing_rows(full: dict | None) -> tuple[list[list[str]], dict]:
  rows, curves = [], {}
  if not full:
    return rows, curves
  for name, r in full["splits"].items():
    for relevance in ("pairing", "label"):
      for direction in ("i2t", "t2i"):
        m = r.get("hashing", {}).get(relevance, {}).get(direction)
        if m:
          rows.append([name, relevance, direction] + [f"{m[k]:.2f}" for k in HASH_KEYS])
          curves[f"{name} {relevance} {direction}"] = m["pr_curve"]
  return rows, curves


def build(workdir: str, out_dir: str | None = None) -> dict[str, str]:
  """Writes report.md (+ PNGs) and report.html; returns their paths."""
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise InputError(f"no run directory {workdir}: give the --workdir of an `rsjax train` run")
  data = collect(workdir)
  if not (data["metrics"] or data["eval"] or data["full"]):
    raise InputError(f"{workdir} has none of metrics.jsonl, eval.json, eval_full.json: "
                     "train or evaluate first")
  metrics_path, eval_path, full_path, gallery_path = (
      os.path.join(workdir, n) for n in ("metrics.jsonl", "eval.json", "eval_full.json",
                                         "eval_gallery.npz"))
  out_dir = out_dir or os.path.join(workdir, "report")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise InputError(f"report folder {out_dir} is a file; give another --out")
  os.makedirs(out_dir, exist_ok=True)
  images: dict[str, bytes] = {}  # file name -> PNG
  md = [f"# rsjax report: {os.path.basename(workdir)}", ""]
  parts = [f"<h1>rsjax report: {html.escape(os.path.basename(workdir))}</h1>"]

  def figure(name: str, png: bytes | None, title: str):
    if png is None:
      return
    images[name] = png
    md.extend([f"## {title}", "", f"![{title}]({name})", ""])
    parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;"
                 f"base64,{base64.b64encode(png).decode()}'>")

  with _reading(metrics_path):
    figure("training_curves.png", training_curves(data["metrics"]), "Training curves")

  with _reading(eval_path, full_path):
    rows = recall_rows(data)
  if rows:
    header = ["model", "split"] + list(RECALL_KEYS)
    md.extend(["## Retrieval (percent)", "", _table(header, rows), ""])
    parts.append("<h2>Retrieval (percent)</h2>" + _html_table(header, rows))

  with _reading(full_path):
    h_rows, curves = hashing_rows(data["full"])
  if h_rows:
    header = ["split", "relevance", "direction"] + list(HASH_KEYS)
    md.extend(["## Hashing: Hamming ranking (percent)", "", _table(header, h_rows), ""])
    parts.append("<h2>Hashing: Hamming ranking (percent)</h2>" + _html_table(header, h_rows))
  with _reading(full_path):
    figure("pr_curves.png", pr_curves(curves), "Precision-recall curves")
    zs = (data["full"] or {}).get("zero_shot", {})
    z_rows = [[n, str(z["num_images"]), str(z["num_classes"]), f"{z['top1']:.2f}",
               f"{z['mean_per_class']:.2f}"] for n, z in zs.items()]
  if zs:
    header = ["data set", "images", "classes", "top-1", "mean per class"]
    md.extend(["## Zero-shot classification (percent)", "", _table(header, z_rows), ""])
    parts.append("<h2>Zero-shot classification (percent)</h2>" + _html_table(header, z_rows))

  with _reading(full_path):
    found = report_efficiency.rows(data["full"])
  md.append("## Efficiency")
  parts.append("<h2>Efficiency</h2>")
  if found:
    md.extend(["", _table(*found), ""])
    parts.append(_html_table(*found))
  else:
    md.extend(["", report_efficiency.MISSING, ""])
    parts.append(f"<p>{html.escape(report_efficiency.MISSING)}</p>")

  with _reading(full_path):
    for split, result in report_robustness.results(data["full"]).items():
      title = f"Robustness, {split}: score against corruption severity"
      figure(f"robustness_{len(images)}.png", report_robustness.plot(result), title)
      header, r_rows = report_robustness.drop_rows(result)
      note = ("Mean relative drop over severities (percent of the clean score, in brackets); "
              f"corruptions seeded with {result['seed']} (`rsjax eval --robustness`).")
      md.extend([note, "", _table(header, r_rows), ""])
      parts.append(f"<p>{html.escape(note)}</p>" + _html_table(header, r_rows))

  g = data["gallery"]
  if g is not None:
    maps = g.get("maps")  # whole-query heat maps; absent from files older than them
    pairs = g["images"].ndim == 6  # [Q, top, T, H, W, 3]: date sequences of a change split
    note = (("Text query -> top before/after sequences, dates left to right (green frame: the "
             "query's own sequence, red: another); the map is drawn on the last date."
             if pairs else
             "Text query -> top images (green frame: the query's own image, red: another image).")
            + (" Beside each: where it matches the query (how far the score falls when each "
               "part of the image is hidden, one colour scale per query, bright = high; "
               "`rsjax explain` draws one image with a map per word)."
               if maps is not None else ""))
    md.extend(["## Retrieval gallery", "", note, ""])
    parts.append(f"<h2>Retrieval gallery</h2><p>{html.escape(note)}</p>")
    with _reading(gallery_path):
      for qi, caption in enumerate(g["captions"]):
        cells_md, cells_html = [], []
        scale = report_gallery.row_range(maps, qi)
        for j in range(g["images"].shape[1]):
          hit = bool(g["hit"][qi, j])
          name = f"gallery_{qi}_{j}.png"
          png = report_gallery.cell(g["images"][qi, j], hit,
                                    None if maps is None else maps[qi, j], scale)
          images[name] = png
          cells_md.append(f"![{'hit' if hit else 'miss'}]({name})")
          cells_html.append(f"<figure><img alt='{'hit' if hit else 'miss'}' src='data:image/png;"
                            f"base64,{base64.b64encode(png).decode()}'><figcaption>"
                            f"{g['scores'][qi, j]:.3f}</figcaption></figure>")
        md.extend([f"**{caption}**", "", " ".join(cells_md), ""])
        parts.append(f"<div class='query'><p><b>{html.escape(str(caption))}</b></p>"
                     f"<div class='row'>{''.join(cells_html)}</div></div>")

  for name, png in images.items():
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(png)
  md_path = os.path.join(out_dir, "report.md")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write("\n".join(md))
  html_path = os.path.join(out_dir, "report.html")
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(_page(os.path.basename(workdir), "\n".join(parts)))
  return {"markdown": md_path, "html": html_path, "images": str(len(images))}


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}.row{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:12px}img{max-width:100%}"""

# Marks the page once every image has decoded; a headless browser reads the attribute back.
_SCRIPT = """function rsjaxCheckImages(){
  var imgs=document.images, ok=0;
  for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}
  if(ok===imgs.length){document.body.setAttribute('data-images-loaded', String(ok));}
  else{setTimeout(rsjaxCheckImages, 20);}
}
window.addEventListener('load', rsjaxCheckImages);"""


def _page(title: str, body: str) -> str:
  return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
          f"<title>rsjax report: {html.escape(title)}</title><style>{_STYLE}</style>"
          f"<script>{_SCRIPT}</script></head>\n<body>\n{body}\n</body></html>\n")
