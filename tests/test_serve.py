"""`rsjax serve`: the JSON API over a real server on 127.0.0.1 (a free port chosen at run time).

Two indexes: one built by `rsjax index` from an RS-Synth archive with a tiny trained model (the
real query path), and one written directly with known vectors and a stand-in text encoder (for
traversal, symlinks and load, where the model does not matter). Also: GeoTIFF footprints and the
bounding-box filter, and the `rsjax serve` command itself in a subprocess.
"""

import concurrent.futures
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from change_runs import PAIRS
from helpers import cli_sets, tiny_config
from rsjax import cli, index
from rsjax.serve import geo, synth_archive
from rsjax.serve.app import create_app
from rsjax.serve.engine import Engine
from rsjax.train.loop import train

SETS = ("model.hashing.bits=32", "train.steps=4", "eval.at_step0=False")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """uvicorn serving `app` on 127.0.0.1 in a thread, stopped by stop()."""

  def __init__(self, app):
    import uvicorn

    self.port = free_port()
    self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                log_level="warning"))
    self.thread = threading.Thread(target=self.server.run, daemon=True)
    self.thread.start()
    deadline = time.time() + 30
    while not self.server.started:
      assert time.time() < deadline and self.thread.is_alive(), "the server did not start"
      time.sleep(0.02)
    self.url = f"http://127.0.0.1:{self.port}"

  def stop(self):
    self.server.should_exit = True
    self.thread.join(10)


def raw_get(port: int, target: str) -> tuple[int, bytes]:
  """GET with the request target sent exactly as given (no client-side dot-segment removal)."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
  conn.putrequest("GET", target, skip_accept_encoding=True)
  conn.endheaders()
  res = conn.getresponse()
  body = res.read()
  conn.close()
  return res.status, body


def get_json(port: int, target: str) -> tuple[int, dict]:
  status, body = raw_get(port, target)
  return status, json.loads(body)


# ------------------------------------------------------------------------------------------
# The real path: tiny model trained on RS-Synth, its test split written as PNGs and indexed.


@pytest.fixture(scope="session")
def synth_index(tmp_path_factory):
  """(index folder, run workdir, archive folder) of a tiny model over an RS-Synth archive."""
  base = tmp_path_factory.mktemp("serve")
  run = str(base / "run")
  train(tiny_config(*SETS), run)
  archive = str(base / "archive")
  assert synth_archive.write_archive(tiny_config(*SETS), "test", archive) == 16
  out = str(base / "index")
  code = cli.main(["index", "--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run,
                   "--images", archive, "--out", out, "--quiet", "--workers", "2"])
  assert code == 0
  return out, run, archive


def serving(index_path: str):
  """A Server over the index at index_path (with its Engine as .engine), stopped afterwards."""
  engine = Engine(index_path)
  server = Server(create_app(engine))
  server.engine = engine
  yield server
  server.stop()


@pytest.fixture(scope="session")
def synth_server(synth_index):
  yield from serving(synth_index[0])


def exact_top(engine: Engine, text: str, k: int) -> list[int]:
  """The exact dense answer, computed here with numpy from the index's vectors."""
  dense, _ = engine.query_model.encode([text])
  scores = engine.index.dense.astype(np.float32) @ dense[0]
  return list(np.argsort(-scores, kind="stable")[:k])


def test_search_similar_info_on_a_real_index(synth_server, synth_index):
  port, engine = synth_server.port, synth_server.engine
  status, info = get_json(port, "/api/info")
  assert status == 200 and info["rows"] == 16 and info["bits"] == 32
  assert info["modes"] == ["dense", "binary", "rerank"] and info["footprints"] == 16
  text = json.loads(open(os.path.join(synth_index[2], "captions.jsonl")).readline())["captions"][0]
  status, res = get_json(port, "/api/search?" + _q(q=text, k=5))
  assert status == 200 and [r["id"] for r in res["results"]] == exact_top(engine, text, 5)
  top = res["results"][0]
  assert top["name"] == os.path.basename(engine.index.paths[top["id"]])
  assert res["milliseconds"] > 0 and top["footprint"] is not None
  status, png = raw_get(port, top["thumb"])
  assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
  for mode in ("binary", "rerank"):
    status, res = get_json(port, "/api/search?" + _q(q=text, k=5, mode=mode))
    assert status == 200 and len(res["results"]) == 5 and res["mode"] == mode
  status, res = get_json(port, f"/api/similar/{top['id']}?k=3")
  assert status == 200 and res["results"][0]["id"] == top["id"]  # itself, score 1
  assert res["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
  status, doc = get_json(port, "/openapi.json")
  assert status == 200 and {"/api/search", "/api/similar/{id}", "/api/info"} <= set(doc["paths"])


def test_bbox_filter_keeps_only_tiles_inside(synth_server):
  port, engine = synth_server.port, synth_server.engine
  boxes = engine.index.footprints
  west, south = boxes[:, 0].min(), boxes[:, 1].min()
  box = f"{west - 1e-4},{south - 1e-4},{west + 0.015},{south + 0.005}"  # two tiles of the grid
  inside = set(np.flatnonzero((boxes[:, 0] <= west + 0.015) & (boxes[:, 1] <= south + 0.005)))
  assert 0 < len(inside) < len(boxes)
  for mode in ("dense", "binary", "rerank"):
    status, res = get_json(port, "/api/search?" + _q(q="a tile", k=10, mode=mode, bbox=box))
    assert status == 200 and {r["id"] for r in res["results"]} == inside, mode
  status, res = get_json(port, "/api/similar/0?" + _q(k=10, bbox=box))
  assert status == 200 and {r["id"] for r in res["results"]} == inside
  status, res = get_json(port, "/api/search?" + _q(q="x", bbox="1,2,3"))
  assert status == 400 and "four numbers" in res["error"]


# ------------------------------------------------------------------------------------------
# A pair index (conftest.py's: a tiny change encoder over RS-Synth before/after PNG pairs).


@pytest.fixture(scope="session")
def pair_server(pair_index):
  yield from serving(pair_index[0])


def thumbnail_pixels(port: int, url: str) -> np.ndarray:
  import io

  from PIL import Image

  status, png = raw_get(port, url)
  assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n", url
  return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_a_pair_index_answers_with_its_before_and_after_images(pair_server):
  from PIL import Image

  port, engine = pair_server.port, pair_server.engine
  status, info = get_json(port, "/api/info")
  assert status == 200 and info["pairs"] is True and info["rows"] == PAIRS
  text = "two buildings were built"
  status, res = get_json(port, "/api/search?" + _q(q=text, k=PAIRS))
  assert status == 200 and [r["id"] for r in res["results"]] == exact_top(engine, text, PAIRS)
  for r in res["results"]:
    before, after = engine.index.paths[r["id"]]
    assert r["before"]["path"] == "before/" + os.path.basename(before)
    assert r["after"]["path"] == "after/" + os.path.basename(after)
    assert (r["name"], r["path"]) == (r["after"]["name"], r["after"]["path"])
  # Each side's thumbnail is its own file: 32 px enlarged 5x by nearest neighbours.
  top = res["results"][0]
  for side, file in zip(("before", "after"), engine.index.paths[top["id"]]):
    thumb = thumbnail_pixels(port, top[side]["thumb"])
    assert thumb.shape == (160, 160, 3)
    np.testing.assert_array_equal(thumb[::5, ::5], np.asarray(Image.open(file).convert("RGB")))
  status, res = get_json(port, f"/api/similar/{top['id']}?k=3")
  assert status == 200 and res["results"][0]["id"] == top["id"]  # itself, score 1
  assert res["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
  status, res = get_json(port, "/api/search?" + _q(q=text, k=3, mode="binary"))
  assert status == 200 and all(r["before"] and r["after"] for r in res["results"])
  for target in ("/thumbs/before/../after/000.png", "/thumbs/000.png", "/thumbs/before"):
    assert raw_get(port, target)[0] == 404, target


def _q(**params) -> str:
  import urllib.parse
  return urllib.parse.urlencode(params)


@pytest.mark.parametrize("target, status, words", [
    ("/api/search?q=", 400, "empty"),
    ("/api/search?q=%20%20", 400, "empty"),
    ("/api/search?q=" + "a" * 501, 400, "at most 500"),
    ("/api/search?q=x&k=0", 422, "k: "),
    ("/api/search?q=x&k=201", 422, "k: "),
    ("/api/search?q=x&k=ten", 422, "k: "),
    ("/api/search?q=x&mode=fuzzy", 400, "unknown mode"),
    ("/api/search", 422, "q: "),
    ("/api/similar/99999", 404, "no image 99999"),
    ("/api/similar/-1", 404, "no image -1"),
    ("/api/similar/abc", 422, "id: "),
    ("/api/nothing", 404, "Not Found"),
])
def test_bad_requests_get_a_one_line_4xx_and_the_server_goes_on(synth_server, target, status,
                                                                 words):
  got, body = raw_get(synth_server.port, target)
  message = json.loads(body)["error"]
  assert got == status and words in message and "\n" not in message
  assert "Traceback" not in body.decode()
  status, res = get_json(synth_server.port, "/api/search?q=roads&k=2")  # still answering
  assert status == 200 and len(res["results"]) == 2


def test_index_command_reads_geotiff_footprints(synth_index, tmp_path):
  """Small GeoTIFFs with known tie points and pixel scales: the index stores their footprints."""
  import tifffile

  _, run, _ = synth_index
  folder = tmp_path / "geotiffs"
  folder.mkdir()
  known = {}
  rng = np.random.default_rng(0)
  for n, (lon, lat) in enumerate([(2.0, 48.0), (2.5, 48.0), (13.0, 52.0)]):
    size, px = 40, 0.001  # 40 pixels of 0.001 degrees: a 0.04-degree tile
    path = folder / f"tile_{n}.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                     photometric="rgb", extratags=[
                         (geo.PIXEL_SCALE, 12, 3, (px, px, 0.0)),
                         (geo.TIEPOINT, 12, 6, (0.0, 0.0, 0.0, lon, lat, 0.0))])
    known[str(path)] = (lon, lat - size * px, lon + size * px, lat)
  for p, box in known.items():
    np.testing.assert_allclose(geo.geotiff_footprint(p), box)
  out = str(tmp_path / "geo_index")
  assert cli.main(["index", "--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run,
                   "--images", str(folder), "--out", out, "--quiet"]) == 0
  idx = index.load(out)
  for row, p in enumerate(idx.paths):
    np.testing.assert_allclose(idx.footprints[row], known[p])
  engine = Engine(out)
  hits, _ = engine.search_text("fields", 10, "dense", geo.parse_bbox("1.9,47.9,2.3,48.1"))
  assert [idx.paths[h.row] for h in hits] == [str(folder / "tile_0.tif")]
  hits, _ = engine.search_text("fields", 10, "dense", geo.parse_bbox("2.01,47.97,2.6,47.99"))
  assert sorted(os.path.basename(idx.paths[h.row]) for h in hits) == ["tile_0.tif", "tile_1.tif"]


# ------------------------------------------------------------------------------------------
# Known vectors and a stand-in encoder: traversal, symlinks, many concurrent queries.


class HashText:
  """Stand-in text encoder: a fixed unit vector per text (sha256-seeded)."""

  def __init__(self, dim: int, bits: int):
    self.dim, self.bits = dim, bits

  def encode(self, texts):
    vecs, codes = [], []
    for t in texts:
      rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big"))
      v = rng.normal(size=self.dim).astype(np.float32)
      vecs.append(v / np.linalg.norm(v))
      codes.append(np.packbits(rng.normal(size=self.bits) > 0))
    return np.stack(vecs), np.stack(codes)


@pytest.fixture(scope="module")
def archive_server(tmp_path_factory):
  """A server over 300 PNGs in archive/ (one of them a symlink to a file outside it)."""
  from PIL import Image

  base = tmp_path_factory.mktemp("archive")
  archive = base / "archive"
  (archive / "sub").mkdir(parents=True)
  outside = base / "secret.png"
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(outside)
  rng = np.random.default_rng(0)
  paths = []
  for n in range(299):
    p = archive / "sub" / f"img_{n:03d}.png"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(p)
    paths.append(str(p))
  top = archive / "top.png"  # so that the archive root is archive/, above sub/
  Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(top)
  paths[0] = str(top)
  link = archive / "sub" / "link_out.png"
  os.symlink(outside, link)
  paths.append(str(link))
  dense = rng.normal(size=(300, 8)).astype(np.float32)
  dense /= np.linalg.norm(dense, axis=1, keepdims=True)
  codes = rng.integers(0, 256, (300, 4), dtype=np.uint8)
  identity = {"config": {"model": {"hashing": {"bits": 32}}}, "checkpoint": "/none", "step": 1,
              "params_digest": "x", "tokenizer": None, "tokenizer_digest": None}
  out = str(base / "index")
  index.write_chunk(out, identity, paths, dense, codes, "float32")
  engine = Engine(out, query_model=HashText(8, 32))
  server = Server(create_app(engine))
  server.engine, server.archive, server.outside = engine, archive, outside
  yield server
  server.stop()


def test_thumbnails_only_for_indexed_images_and_traversal_refused(archive_server):
  port = archive_server.port
  status, png = raw_get(port, "/thumbs/sub/img_007.png")
  assert status == 200 and png[:4] == b"\x89PNG"
  secret = str(archive_server.outside)
  attempts = [
      "/thumbs/../secret.png", "/thumbs/sub/../../secret.png", "/thumbs/%2e%2e/secret.png",
      "/thumbs/sub/%2e%2e%2f%2e%2e%2fsecret.png", "/thumbs/..%2fsecret.png",
      "/thumbs/%252e%252e/secret.png", "/thumbs/sub%5c..%5c..%5csecret.png",
      "/thumbs/" + secret, "/thumbs//" + secret.lstrip("/"), "/thumbs/%2F" + secret.lstrip("/"),
      "/thumbs/sub/img_007.png%00.txt", "/thumbs/sub/./img_007.png/..", "/thumbs/sub/nope.png",
      "/thumbs/sub", "/thumbs/", "/thumbs/sub/img_007.png/", "/static/../../../../etc/passwd",
      "/static/%2e%2e/%2e%2e/app.py", "/static/..%2fapp.py", "/thumbs/sub/link_out.png",
  ]
  for target in attempts:
    status, body = raw_get(port, target)
    assert status in (400, 403, 404), (target, status)
    assert b"\x89PNG" not in body and b"root:" not in body and b"import" not in body, target
  status, body = raw_get(port, "/thumbs/sub/link_out.png")  # indexed, but a symlink out: refused
  assert status == 403 and "outside the archive" in json.loads(body)["error"]
  status, _ = raw_get(port, "/static/app.js")  # the page's own files are served
  assert status == 200


def test_200_concurrent_queries_all_answered_correctly(archive_server):
  engine = archive_server.engine
  texts = [f"query number {n}" for n in range(200)]
  modes = ["dense", "binary", "rerank"]
  want = {}
  for n, t in enumerate(texts):  # expected answers from numpy, outside the server
    dense, codes = engine.query_model.encode([t])
    mode = modes[n % 3]
    if mode == "dense":
      want[t] = list(np.argsort(-(engine.index.dense @ dense[0]), kind="stable")[:10])
    elif mode == "binary":
      ham = np.unpackbits(engine.index.codes ^ codes[0], axis=1).sum(1)
      want[t] = list(np.argsort(ham, kind="stable")[:10])
    else:
      ham = np.unpackbits(engine.index.codes ^ codes[0], axis=1).sum(1)
      pool = np.argsort(ham, kind="stable")[:100]
      want[t] = list(pool[np.argsort(-(engine.index.dense[pool] @ dense[0]), kind="stable")][:10])

  def ask(n):
    return n, get_json(archive_server.port, "/api/search?" + _q(q=texts[n], k=10,
                                                                 mode=modes[n % 3]))

  with concurrent.futures.ThreadPoolExecutor(50) as pool:
    answers = list(pool.map(ask, range(200)))
  assert len(answers) == 200
  for n, (status, res) in answers:
    assert status == 200, res
    assert [r["id"] for r in res["results"]] == want[texts[n]], (n, modes[n % 3])


def test_serve_command_binds_loopback_and_answers(synth_index):
  """`rsjax serve INDEX --port N` in its own process: listening on 127.0.0.1 only."""
  port = free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.Popen([sys.executable, "-m", "rsjax.cli", "serve", synth_index[0], "--port",
                           str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    line = proc.stdout.readline()  # printed once the socket is bound
    assert f"http://127.0.0.1:{port}/" in line, line + proc.stdout.read()
    status, info = get_json(port, "/api/info")
    assert status == 200 and info["rows"] == 16
    status, page = raw_get(port, "/")
    assert status == 200 and b'id="q"' in page and b"http" not in page.replace(b"http-equiv", b"")
    with socket.socket() as s:  # listening on loopback only
      s.bind(("127.0.0.1", 0))
    listening = [c for c in open("/proc/net/tcp").read().splitlines()[1:]
                 if c.split()[1].endswith(f":{port:04X}") and c.split()[3] == "0A"]
    assert listening and all(c.split()[1].startswith("0100007F:") for c in listening)
  finally:
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


def test_index_and_search_with_ann_on_the_command_line(synth_index, tmp_path, capsys):
  _, run, archive = synth_index
  out = str(tmp_path / "ann_index")
  assert cli.main(["index", "--config", "configs/smoke.py", *cli_sets(*SETS), "--checkpoint", run,
                   "--images", archive, "--out", out, "--quiet", "--ann"]) == 0
  assert "usearch HNSW" in capsys.readouterr().out
  answers = []
  for extra in ([], ["--ann"]):
    assert cli.main(["search", out, "red roofs", "--k", "5", "--json", *extra]) == 0
    answers.append([h["path"] for h in json.loads(capsys.readouterr().out)["results"]])
  assert answers[0] == answers[1]  # 16 rows: the graph finds the exact top 5
  assert cli.main(["search", out, "x", "--ann", "--binary"]) == 2
  assert "drop --binary or --ann" in capsys.readouterr().err
  assert cli.main(["search", synth_index[0], "x", "--ann"]) == 2
  assert "rsjax index --ann" in capsys.readouterr().err
