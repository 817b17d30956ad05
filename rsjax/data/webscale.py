"""Web-scale pretraining corpora -> array_record shards, by streaming, resumably.

Two input layouts:
  webdataset  tar shards of samples grouped by name: 000123.jpg + 000123.txt (or .json with
              "caption" / "captions"), as RS5M and many CLIP corpora ship
  parquet     tables with an image column (a path under --image-dir, or the image bytes) and a
              caption column (text or list of texts), as SkyScript / RS5M metadata ship

Inputs are read sequentially (a tar is never extracted) and cut into chunks of `shard_size`
samples; each chunk becomes one output shard, written to a temporary name and renamed when
complete, after which progress.json records it. A rerun after an interruption skips the recorded
chunks, so at most one chunk is redone. A tqdm bar counts samples.

Each output record is one image and its captions (`ConvertedSource` reads them back for the grain
pipeline in rsjax/data/stream.py). Images are decoded once while converting, so a corrupt one
stops the conversion with its tar member / parquet row named, or under skip_bad_records is
skipped and listed in progress.json.
"""

from __future__ import annotations

import json
import os
import itertools
import struct
import tarfile
from typing import Callable, Iterator, Sequence

from rsjax.atomic import atomic_file, write_json
from rsjax.data import decode, records
from rsjax.errors import InputError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
PROGRESS = "progress.json"


def encode_record(key: str, image: bytes, captions: Sequence[str]) -> bytes:
  """[4-byte header length][JSON header {key, captions}][image bytes]."""
  header = json.dumps({"key": key, "captions": list(captions)}).encode("utf-8")
  return struct.pack("<I", len(header)) + header + image


def decode_record(data: bytes) -> dict:
  (n,) = struct.unpack_from("<I", data)
  header = json.loads(data[4:4 + n].decode("utf-8"))
  return {"key": header["key"], "image": data[4 + n:], "captions": header["captions"],
          "label": ""}


def _captions_of(value, where: str) -> list | records.BadRecordError:
  if isinstance(value, (bytes, bytearray)):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:  # refused (or skipped) by the record check, named
      return records.CaptionTypeError(f"{where}: caption is not UTF-8 text ({e.reason} at byte "
                                      f"{e.start})")
  if isinstance(value, str):
    return [value]
  if isinstance(value, dict):
    return _captions_of(value.get("captions", value.get("caption", [])), where)
  if isinstance(value, (list, tuple)):
    return list(value)
  if value is None:
    return []
  return [value]  # not text: rejected by the record check, naming `where`


def webdataset_samples(path: str) -> Iterator[tuple[str, Callable, list]]:
  """(where, image loader, captions) per sample of a tar shard, in member order, streamed."""
  current, parts = None, {}

  def flush():
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    where = f"{path}:{current}"
    if "txt" in parts:
      captions = _captions_of(parts["txt"], current)
    elif "json" in parts:
      try:
        captions = _captions_of(json.loads(parts["json"]), current)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        # a bad record: refused (or skipped with skip_bad_records) by _check, naming the member
        captions = records.CaptionTypeError(f"{where}.json: not valid JSON ({e})")
    else:
      captions = []
    return where, (lambda: image), captions

  try:
    with tarfile.open(path, "r|*") as tar:  # stream mode: no seeking, no extraction
      for member in tar:
        if not member.isfile():
          continue
        base = os.path.basename(member.name)
        key, _, ext = base.partition(".")
        key = os.path.join(os.path.dirname(member.name), key)
        if current is not None and key != current:
          yield flush()
          parts = {}
        current = key
        parts[ext.lower()] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError) as e:
    after = f" after sample {current}" if current is not None else ""
    raise InputError(f"{path}: not a readable tar shard{after} ({type(e).__name__}: {e}); give "
                     "webdataset .tar files") from None
  if current is not None:
    yield flush()


def parquet_samples(path: str, image_dir: str, image_column: str,
                    caption_column: str) -> Iterator[tuple[str, Callable, list]]:
  """(where, image loader, captions) per row, read in record batches; image files are read
  only when the loader is called (not for rows an earlier run converted)."""
  import pyarrow.parquet as pq

  import pyarrow as pa

  if not os.path.isfile(path):
    raise InputError(f"parquet file not found: {path}")
  try:
    table = pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise InputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
  missing = [c for c in (image_column, caption_column) if c not in table.schema_arrow.names]
  if missing:
    raise InputError(f"{path}: no column(s) {missing} (columns: {table.schema_arrow.names}); "
                     "name them with --image-column / --caption-column")
  row = 0
  for batch in table.iter_batches(batch_size=1024, columns=[image_column, caption_column]):
    for image, caption in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
      where = f"{path}:row {row}"
      row += 1
      if isinstance(image, str):
        full = os.path.join(image_dir, image)
        where = f"{where} ({full})"
        load = lambda full=full: open(full, "rb").read() if os.path.isfile(full) else None
      else:
        load = lambda image=image: image
      yield where, load, _captions_of(caption, where)


def _check(where: str, image: bytes | None, captions) -> None:
  if isinstance(captions, records.BadRecordError):  # found while reading the sample
    raise captions
  if image is None:
    raise records.MissingImageError(f"{where}: no image file")
  records.check_record(records.Record(key=where, split="train", images=(), captions=tuple(captions),
                                      where=where))
  decode.decode(image, where)


def _chunks(samples: Iterator, size: int) -> Iterator[list]:
  while True:
    group = list(itertools.islice(samples, size))
    if not group:
      return
    yield group


def _write_shard(path: str, payloads: list[bytes]) -> None:
  """Writes an array_record file under a temporary name, then renames it into place."""
  from array_record.python.array_record_module import ArrayRecordWriter

  with atomic_file(path) as tmp:
    writer = ArrayRecordWriter(tmp, "group_size:1")
    for payload in payloads:
      writer.write(payload)
    writer.close()


def convert(kind: str, sources: Sequence[str], out_dir: str, image_dir: str = "",
            image_column: str = "image", caption_column: str = "caption", shard_size: int = 10000,
            skip_bad_records: bool = False, progress: bool = True) -> str:
  """Converts `sources` (tar shards or parquet files, in order) into out_dir; resumable.

  Chunk j of source i (its samples j*shard_size ... (j+1)*shard_size - 1, bad ones included, so
  chunk boundaries never move) becomes shard-<i>-<j>.array_record."""
  from tqdm import tqdm

  if kind not in ("webdataset", "parquet"):
    raise InputError(f"unknown corpus kind {kind!r} (webdataset or parquet)")
  if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
    raise InputError(f"--shard-size (records per output shard) must be an integer >= 1, got "
                     f"{shard_size!r}")
  sources = [os.path.abspath(s) for s in sources]
  missing = [s for s in sources if not os.path.isfile(s)]
  if missing:
    raise InputError(f"{kind} source file(s) not found: {', '.join(missing)}")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise InputError(f"--out {out_dir} is a file; give a new folder (or the folder of an "
                     "interrupted conversion to resume it)")
  os.makedirs(out_dir, exist_ok=True)
  state_path = os.path.join(out_dir, PROGRESS)
  state = {"kind": kind, "sources": sources, "shard_size": shard_size, "done": {},
           "bad_records": [], "records": 0, "complete": False}
  if os.path.exists(state_path):
    saved = _read_progress(out_dir)
    if (saved["kind"], saved["sources"], saved["shard_size"]) != (kind, sources, shard_size):
      raise InputError(f"{out_dir} holds a conversion of other inputs or shard size; "
                       "use a new output folder")
    state = saved
  # A context: the bar ends its line before an error is printed after it.
  with tqdm(desc=f"converting {kind}", unit=" samples", disable=not progress) as bar:
    for index, source in enumerate(sources):
      samples = (webdataset_samples(source) if kind == "webdataset" else
                 parquet_samples(source, image_dir, image_column, caption_column))
      for chunk, group in enumerate(_chunks(samples, shard_size)):
        name = f"shard-{index:05d}-{chunk:05d}.array_record"
        bar.update(len(group))
        if name in state["done"]:
          continue  # converted before an interruption
        payloads, bad = [], []
        for where, load, captions in group:
          image = load()
          try:
            _check(where, image, captions)
          except records.BadRecordError as e:
            if not skip_bad_records:
              raise
            bad.append({"record": where, "error": type(e).__name__, "message": str(e)})
            continue
          texts = [c.strip() for c in captions if c.strip()]
          payloads.append(encode_record(where, image, texts))
        _write_shard(os.path.join(out_dir, name), payloads)
        state["done"][name] = len(payloads)
        state["records"] += len(payloads)
        state["bad_records"] += bad
        write_json(state_path, state, indent=1)
  state["complete"] = True
  write_json(state_path, state, indent=1)
  if state["bad_records"]:
    from rsjax.console import log
    skipped = state["bad_records"]  # a web corpus can have millions: all are in progress.json
    log("\n".join([f"skipped {len(skipped)} bad record(s) (all listed in {state_path}):"]
                  + records.capped([f"  {b['error']}: {b['message']}" for b in skipped])))
  return out_dir


def _read_progress(out_dir: str) -> dict:
  """out_dir's progress.json, or an InputError saying that out_dir is no converted corpus."""
  path = os.path.join(out_dir, PROGRESS)
  if not os.path.isfile(path):
    raise InputError(f"{out_dir} is not a converted corpus (no {PROGRESS}); make one with "
                     "`rsjax data convert`")
  try:
    with open(path) as f:
      state = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: not valid JSON ({e}); use a new output folder") from None
  keys = ("kind", "sources", "shard_size", "done")
  if not isinstance(state, dict) or any(k not in state for k in keys):
    raise InputError(f"{path}: not the progress file `rsjax data convert` writes (keys {keys}); "
                     "use a new output folder")
  return state


class ConvertedSource:
  """Random access to a converted corpus: index -> {"key", "image", "captions", "label"}."""

  def __init__(self, out_dir: str):
    import grain

    state = _read_progress(out_dir)
    if not state.get("complete"):
      raise InputError(f"{out_dir}: the conversion is not complete; rerun it to finish")
    shards = [os.path.join(out_dir, n) for n in sorted(state["done"]) if state["done"][n]]
    self._source = grain.sources.ArrayRecordDataSource(shards)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    return decode_record(self._source[index])
