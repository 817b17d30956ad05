"""`rsjax serve` under load: latency (p50, p99) and queries/s of /api/search over indexes of
100,000 and 1,000,000 rows, dense and binary, through a real uvicorn server on 127.0.0.1.

The index holds random unit vectors (128-d float16, the demo model's width) and 64-bit codes,
written with rsjax.index (memory-mapped chunks, as `rsjax index` writes them). The text tower is
replaced by a fixed random encoder, so that the figures are the server's and the search's: add
the model's own text encoding time (a few ms for the demo model) for a real query.
Clients: 1 (latency of one user) and 8 concurrent keep-alive connections (throughput).

  .venv/bin/python benchmarks/serve.py                        # 100k and 1M rows
  .venv/bin/python benchmarks/serve.py --rows 20000 --requests 100   # quick check
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import socket
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import report  # noqa: E402
from rsjax import index  # noqa: E402
from rsjax.serve.app import create_app  # noqa: E402
from rsjax.serve.engine import Engine  # noqa: E402

DIM, BITS = 128, 64


class RandomText:
  """Stand-in text encoder: a fixed unit vector and code per text."""

  def encode(self, texts):
    vecs, codes = [], []
    for t in texts:
      rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big"))
      v = rng.normal(size=DIM).astype(np.float32)
      vecs.append(v / np.linalg.norm(v))
      codes.append(np.packbits(rng.normal(size=BITS) > 0))
    return np.stack(vecs), np.stack(codes)


def build_index(path: str, rows: int, rng) -> None:
  identity = {"config": {"model": {"hashing": {"bits": BITS}}}, "checkpoint": "/bench", "step": 0,
              "params_digest": "bench", "tokenizer": None, "tokenizer_digest": None}
  chunk = 250_000
  for lo in range(0, rows, chunk):
    n = min(chunk, rows - lo)
    dense = rng.standard_normal((n, DIM), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    index.write_chunk(path, identity, [f"/bench/tile_{i:08d}.png" for i in range(lo, lo + n)],
                      dense, codes, "float16", append=lo > 0)


def serve(app):
  import uvicorn

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.02)
  return server, thread, port


def load(port: int, mode: str, clients: int, requests: int, k: int) -> tuple[list[float], float]:
  """(latencies in seconds, wall seconds) of `requests` searches from `clients` connections."""
  per = -(-requests // clients)

  def client(c):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times = []
    for n in range(per):
      start = time.perf_counter()
      conn.request("GET", f"/api/search?q=tile+{c}+{n}&k={k}&mode={mode}")
      res = conn.getresponse()
      body = res.read()
      times.append(time.perf_counter() - start)
      assert res.status == 200 and len(json.loads(body)["results"]) == k, body[:200]
    conn.close()
    return times

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    lat = [t for ts in pool.map(client, range(clients)) for t in ts]
  return lat, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
  parser.add_argument("--requests", type=int, default=400, help="per (rows, mode, clients)")
  parser.add_argument("--k", type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  for n in args.rows:
    with tempfile.TemporaryDirectory(dir=os.environ.get("RSJAX_BENCH_TMP")) as tmp:
      build_index(os.path.join(tmp, "idx"), n, rng)
      engine = Engine(os.path.join(tmp, "idx"), query_model=RandomText())
      server, thread, port = serve(create_app(engine))
      try:
        for mode in ("dense", "binary", "rerank"):
          load(port, mode, 1, 10, args.k)  # warm-up
          for clients in (1, 8):
            lat, wall = load(port, mode, clients, args.requests, args.k)
            ms = np.asarray(lat) * 1000
            rows.append({"rows": n, "mode": mode, "clients": clients, "requests": len(lat),
                         "k": args.k, "p50_ms": float(np.percentile(ms, 50)),
                         "p99_ms": float(np.percentile(ms, 99)), "queries_per_s": len(lat) / wall})
            print(rows[-1], flush=True)
      finally:
        server.should_exit = True
        thread.join(10)
  report(rows, __file__, meta={"dim": DIM, "bits": BITS, "dense_dtype": "float16",
                               "encoder": "random stand-in (server + search only)"})


if __name__ == "__main__":
  main()
