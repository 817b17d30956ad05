"""The JSON API: /api/search, /api/similar/{id}, /api/info (described at /openapi.json, /docs).

Parameters are checked here and a bad one is a 4xx with a one-line message (app.py turns every
refusal into {"error": "..."}).
"""

from __future__ import annotations

import os

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from rsjax.errors import InputError
from rsjax.serve import geo
from rsjax.serve.engine import MODES, Engine
from rsjax.serve.thumbnails import Thumbnails, row_files

MAX_QUERY_CHARS = 500
MAX_K = 200


class Picture(BaseModel):
  name: str               # file name
  path: str               # path relative to the archive root
  thumb: str              # URL of the thumbnail


class Result(BaseModel):
  rank: int
  id: int                 # the row of the index: /api/similar/{id}
  score: float            # inner product (dense, rerank) or Hamming distance (binary)
  name: str               # file name (of a pair: its after image's)
  path: str               # path relative to the archive root
  thumb: str              # URL of the thumbnail
  footprint: list[float] | None = None  # [west, south, east, north], where known
  before: Picture | None = None  # of a pair index's row: the before image
  after: Picture | None = None   # ... and the after image


class Results(BaseModel):
  query: str | None = None
  similar_to: int | None = None
  mode: str
  k: int
  bbox: list[float] | None = None
  milliseconds: float     # encoding + search time in the server
  results: list[Result]


class Info(BaseModel):
  index: str
  rows: int
  chunks: int
  dim: int
  dense_dtype: str
  bits: int
  modes: list[str]
  model_checkpoint: str
  model_step: int
  archive_root: str
  pairs: bool             # rows are before/after pairs (a change encoder's index)
  footprints: int         # rows with a known footprint
  extent: list[float] | None  # [west, south, east, north] around them
  max_k: int
  max_query_chars: int


def router(engine: Engine, thumbs: Thumbnails) -> APIRouter:
  api = APIRouter(prefix="/api")

  def picture(file: str) -> Picture:
    return Picture(name=os.path.basename(file), path=thumbs.relative(file), thumb=thumbs.url(file))

  def results(hits, seconds: float, mode: str, k: int, bbox, **what) -> Results:
    boxes = engine.geo.boxes
    out = []
    for rank, hit in enumerate(hits, 1):
      box = boxes[hit.row].tolist() if boxes is not None else None
      files = [picture(f) for f in row_files(engine.index.paths[hit.row])]
      sides = {"before": files[0], "after": files[-1]} if engine.index.pairs else {}
      out.append(Result(rank=rank, id=hit.row, score=hit.score, **files[-1].model_dump(),
                        footprint=box if box is not None and all(v == v for v in box) else None,
                        **sides))
    return Results(mode=mode, k=k, bbox=list(bbox) if bbox else None,
                   milliseconds=round(seconds * 1000, 3), results=out, **what)

  def as_bad_request(call, *args):
    """`call(*args)`, with an InputError (bad bbox, unknown mode) answered as a one-line 400."""
    try:
      return call(*args)
    except InputError as e:
      raise HTTPException(400, str(e)) from None

  @api.get("/search", response_model=Results, summary="Images of the index for a text query")
  def search(q: str = Query(..., description=f"query text, 1 to {MAX_QUERY_CHARS} characters"),
             k: int = Query(20, ge=1, le=MAX_K, description="number of results"),
             mode: str = Query("dense", description=f"one of {', '.join(MODES)}"),
             bbox: str | None = Query(None, description="west,south,east,north: only images "
                                      "whose footprint meets this box")):
    if not q.strip():
      raise HTTPException(400, "q is empty; give some text to search for")
    if len(q) > MAX_QUERY_CHARS:
      raise HTTPException(400, f"q has {len(q)} characters; at most {MAX_QUERY_CHARS}")
    box = as_bad_request(geo.parse_bbox, bbox)
    hits, seconds = as_bad_request(engine.search_text, q, k, mode, box)
    return results(hits, seconds, mode, k, box, query=q)

  @api.get("/similar/{id}", response_model=Results,
           summary="More like this: images nearest to image {id} of the index")
  def similar(id: int, k: int = Query(20, ge=1, le=MAX_K), mode: str = Query("dense"),
              bbox: str | None = Query(None)):
    if not 0 <= id < len(engine.index):
      raise HTTPException(404, f"no image {id} in this index (ids 0 to {len(engine.index) - 1})")
    box = as_bad_request(geo.parse_bbox, bbox)
    hits, seconds = as_bad_request(engine.similar, id, k, mode, box)
    return results(hits, seconds, mode, k, box, similar_to=id)

  @api.get("/info", response_model=Info, summary="What the index holds")
  def info():
    meta = engine.index.meta
    return Info(index=engine.path, rows=len(engine.index), chunks=len(meta["chunks"]),
                dim=int(meta["dim"]), dense_dtype=meta["dense_dtype"], bits=engine.index.bits,
                modes=list(engine.modes), model_checkpoint=meta["model"]["checkpoint"],
                model_step=int(meta["model"]["step"]), archive_root=thumbs.root,
                pairs=engine.index.pairs, footprints=engine.geo.known, extent=engine.geo.extent(), max_k=MAX_K,
                max_query_chars=MAX_QUERY_CHARS)

  return api
