"""The search page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no
network): type a query whose answer is known, see the grid, click "more like this", switch to
binary, and save a screenshot under the test's folder; over a pair index, the before/after view."""

import json
import os
import shutil

import numpy as np
import pytest

from change_runs import PAIRS
from test_serve import exact_top, pair_server, synth_index, synth_server  # noqa: F401


def chromium() -> str:
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  if path is None:
    pytest.fail("headless Chromium is needed: apt-get install chromium (Debian)")
  return path


@pytest.fixture(scope="module")
def page():
  sync_api = pytest.importorskip("playwright.sync_api")
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium(),
                                args=["--no-sandbox", "--disable-gpu"])
    pg = browser.new_page(viewport={"width": 1200, "height": 900})
    pg.messages, pg.requests = [], []
    pg.on("console", lambda m: pg.messages.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.messages.append(f"pageerror: {e}"))
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    browser.close()


def grid_ids(pg) -> list[int]:
  return [int(x) for x in pg.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.id)")]


def wait_for_new_grid(pg, before: str):
  pg.wait_for_function("prev => document.querySelector('#status').textContent !== prev && "
                       "!document.querySelector('#status').textContent.startsWith('searching')",
                       arg=before)


def test_page_search_more_like_this_and_binary(synth_server, synth_index, page, tmp_path):
  pg, engine = page, synth_server.engine
  pg.goto(synth_server.url + "/")
  pg.wait_for_selector("body[data-ready='1']")
  assert "16 images" in pg.inner_text("#info")
  listing = os.path.join(synth_index[2], "captions.jsonl")
  text = json.loads(open(listing).readlines()[3])["captions"][0]
  pg.fill("#q", text)
  pg.select_option("#k", "10")
  pg.click("#search")
  pg.wait_for_selector("body[data-state='done']")
  ids = grid_ids(pg)
  assert len(ids) == 10 and ids == exact_top(engine, text, 10)  # the exact answer, in order
  first = pg.locator("#grid .card").first
  assert first.locator(".name").inner_text() == os.path.basename(engine.index.paths[ids[0]])
  assert first.locator(".score").inner_text().startswith("score ")
  assert "ms on the server" in pg.inner_text("#status")
  pg.wait_for_function("() => [...document.querySelectorAll('#grid img')]"
                       ".every(i => i.complete && i.naturalWidth > 0)")
  # More like this from the third result: the image itself comes first (cosine 1 with itself).
  before = pg.inner_text("#status")
  pg.locator("#grid .card").nth(2).locator("button.more").click()
  wait_for_new_grid(pg, before)
  similar = grid_ids(pg)
  assert similar[0] == ids[2] and f"image {ids[2]}" in pg.inner_text("#status")
  # Binary: the same "more like this" by Hamming distance; scores turn into distances.
  before = pg.inner_text("#status")
  pg.check("input[name='mode'][value='binary']")
  wait_for_new_grid(pg, before)
  assert "(binary)" in pg.inner_text("#status")
  hamming = pg.locator("#grid .card").first.locator(".score").inner_text()
  assert hamming == "hamming 0"  # the query image's own code
  codes = engine.index.codes
  want = np.argsort(np.unpackbits(codes ^ codes[ids[2]], axis=1).sum(1), kind="stable")[:10]
  assert grid_ids(pg) == list(want)
  shot = tmp_path / "serve_page.png"
  pg.screenshot(path=str(shot), full_page=True)
  assert shot.stat().st_size > 10_000
  # Bad input shows its one-line message on the page.
  pg.fill("#q", "x" * 10)
  pg.fill("#bbox", "1,2")
  pg.click("#search")
  pg.wait_for_function("() => document.querySelector('#status').className === 'error'")
  assert "four numbers" in pg.inner_text("#status")
  errors = [m for m in pg.messages if m.startswith(("error", "pageerror"))]
  assert errors == [] or all("400" in m for m in errors), errors
  assert all(u.startswith(synth_server.url) for u in pg.requests), "the page fetched elsewhere"


def test_page_shows_before_and_after_of_a_pair_index(pair_server, page, tmp_path):
  pg, engine = page, pair_server.engine
  pg.messages.clear()
  pg.goto(pair_server.url + "/")
  pg.wait_for_selector("body[data-ready='1']")
  assert f"{PAIRS} before/after pairs" in pg.inner_text("#info")
  pg.fill("#q", "a building was demolished")
  pg.click("#search")
  pg.wait_for_function("() => document.querySelector('#status').textContent.includes('results')")
  ids = grid_ids(pg)
  assert ids == exact_top(engine, "a building was demolished", PAIRS)
  first = pg.locator("#grid .card").first
  assert first.locator("figcaption").all_inner_texts() == ["before", "after"]
  before, after = engine.index.paths[ids[0]]
  assert first.locator(".name").inner_text() == (f"{os.path.basename(before)} → "
                                                 f"{os.path.basename(after)}")
  pg.wait_for_function("() => [...document.querySelectorAll('#grid img')]"
                       ".every(i => i.complete && i.naturalWidth > 0)")
  assert pg.locator("#grid .card img").count() == 2 * len(ids)
  shot = tmp_path / "serve_pairs.png"
  pg.screenshot(path=str(shot), full_page=True)
  assert shot.stat().st_size > 10_000
  errors = [m for m in pg.messages if m.startswith(("error", "pageerror"))]
  assert errors == [], errors
