"""`rsjax report`: markdown + self-contained HTML, opened in a real headless browser (Chromium)."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from rsjax import cli


def chromium() -> str:
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if path is None:  # not a skip: CI installs it (.ci/run), and the test must run there
    pytest.fail("headless Chromium is needed: apt-get install chromium (Debian)")
  return path


def open_in_browser(html_path) -> tuple[str, list[str]]:
  """(DOM after scripts ran, console messages) of a page loaded by headless Chromium."""
  proc = subprocess.run(
      [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
       "--v=0", "--virtual-time-budget=5000", "--dump-dom", f"file://{html_path}"],
      capture_output=True, text=True, timeout=120)
  console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
  return proc.stdout, console


def fake_run(workdir, with_gallery=True, with_maps=True):
  """The files a trained and evaluated run leaves, with made-up numbers; `with_maps`: the gallery
  has heat maps (an eval_gallery.npz older than them has none)."""
  workdir.mkdir(exist_ok=True)
  rows = [{"step": s, "loss": 4.0 / s, "lr": 1e-3} for s in range(1, 40)]
  rows += [{"step": 20, "val_mR": 11.0}, {"step": 39, "val_mR": 17.5}]
  (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  recalls = {"i2t_r1": 6.8, "i2t_r5": 26.2, "i2t_r10": 42.5, "t2i_r1": 3.8, "t2i_r5": 17.4,
             "t2i_r10": 29.9, "mR": 21.1}
  (workdir / "eval.json").write_text(json.dumps({**recalls, "step": 39, "step0": recalls}))
  curve = {"radius": [0, 1, 2], "precision": [0.9, 0.7, 0.5], "recall": [0.1, 0.4, 1.0]}
  hashing = {k: 12.34 for k in ("map@20", "map@100", "map@all", "p@20", "p@100", "p_r2")}
  full = {"step": 39, "splits": {
      "test": {"retrieval": recalls, "hashing": {"bits": 32, "pairing": {
          "i2t": {**hashing, "pr_curve": curve}, "t2i": {**hashing, "pr_curve": curve}}}},
      "small_objects": {"retrieval": {**recalls, "mR": 9.87}}},
      "zero_shot": {"rsscn7": {"top1": 55.5, "mean_per_class": 54.4, "num_images": 448,
                               "num_classes": 7, "per_class": {}}}}
  clean = {"mR": 21.1, "hash_t2i_map@20": 12.34}
  full["splits"]["test"]["robustness"] = {  # `rsjax eval --robustness` on two corruptions
      "clean": clean, "seed": 0, "severities": [1, 2, 3, 4, 5],
      "scores": {n: {str(s): {k: v * (1 - f * s) for k, v in clean.items()} for s in range(1, 6)}
                 for n, f in (("haze", 0.05), ("cloud", 0.1))},
      "drop": {"haze": {"mR": 15.0, "hash_t2i_map@20": 15.0},
               "cloud": {"mR": 30.0, "hash_t2i_map@20": 30.0}},
      "mean_drop": {"mR": 22.5, "hash_t2i_map@20": 22.5}}
  (workdir / "eval_full.json").write_text(json.dumps(full))
  if with_gallery:
    rng = np.random.default_rng(0)
    np.savez_compressed(workdir / "eval_gallery.npz", captions=np.array(["two planes", "a lake"]),
                        images=rng.integers(0, 255, (2, 3, 32, 32, 3), dtype=np.uint8),
                        hit=np.array([[True, False, False], [False, False, True]]),
                        scores=rng.random((2, 3)).astype(np.float32),
                        **({"maps": rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float16)}
                           if with_maps else {}))


def test_report_opens_in_chromium_without_errors_and_shows_its_images(tmp_path):
  fake_run(tmp_path / "run")
  assert cli.main(["report", str(tmp_path / "run")]) == 0
  out = tmp_path / "run" / "report"
  md = (out / "report.md").read_text()
  assert "| step 39 | small_objects |" in md and "9.87" in md and "55.50" in md
  assert "No efficiency figures: `rsjax eval` measures them" in md  # this run has none
  assert "| mean | 22.50 | 22.50 |" in md and "| cloud | 30.00 | 30.00 |" in md  # robustness
  for name in ("training_curves.png", "pr_curves.png", "robustness_2.png", "gallery_0_0.png"):
    assert f"]({name})" in md and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  page = (out / "report.html").read_text()
  n_img = page.count("<img ")
  assert n_img == 3 + 6  # three plots, 2 queries x 3 gallery images
  assert re.findall(r"src='([^']{0,22})", page) == ["data:image/png;base64,"] * n_img  # inlined
  dom, console = open_in_browser(out / "report.html")
  assert f'data-images-loaded="{n_img}"' in dom, dom[:500]
  assert console == []
  # Each gallery cell holds the framed thumbnail and, beside it, its heat map overlay.
  from PIL import Image
  assert Image.open(out / "gallery_0_0.png").size == (2 * 104 + 4, 104)
  assert "where it matches the query" in md


def test_gallery_without_heat_maps_still_gives_a_report(tmp_path):
  """An eval_gallery.npz written before the heat maps (no 'maps') shows plain thumbnails."""
  from PIL import Image

  fake_run(tmp_path / "run", with_maps=False)
  assert cli.main(["report", str(tmp_path / "run")]) == 0
  out = tmp_path / "run" / "report"
  assert Image.open(out / "gallery_1_2.png").size == (104, 104)
  assert "where it matches" not in (out / "report.md").read_text()


def test_browser_check_catches_broken_pages(tmp_path):
  """The check above can fail: a script error and an undecodable image are both seen."""
  bad = tmp_path / "bad.html"
  bad.write_text("<html><body><img src='data:image/png;base64,AAAA'><script>"
                 "document.body.setAttribute('data-ran', '1'); undefinedFunction();"
                 "</script></body></html>")
  dom, console = open_in_browser(bad)
  assert 'data-ran="1"' in dom
  assert any("undefinedFunction" in line for line in console)
  page = tmp_path / "run"
  fake_run(page, with_gallery=False)
  assert cli.main(["report", str(page)]) == 0
  html = (page / "report" / "report.html").read_text()
  broken = html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
  (page / "report" / "broken.html").write_text(broken)
  dom, _ = open_in_browser(page / "report" / "broken.html")
  assert "<body data-images-loaded" not in dom and "<body>" in dom


def test_report_of_empty_workdir_is_refused(tmp_path, capsys):
  assert cli.main(["report", str(tmp_path)]) == 2
  assert "train or evaluate first" in capsys.readouterr().err
