"""TFDS builders for RS image-text sets: array_record files, images from a manual_dir, no TensorFlow.

`rsjax data prepare NAME --manual-dir DIR --data-dir DIR` runs one. Every set has the same
features, so one grain pipeline reads them all:

  key       text      the image's path relative to the manual dir (a pair's two joined by "|"),
                      unique: rows naming the same image are merged (records.merge_duplicates)
  image     bytes     the image file as stored (JPEG / PNG / TIFF, decoded in the pipeline so
                      16-bit and multi-band TIFFs keep everything)
  image_b   bytes     the "after" image of a change pair, b"" otherwise
  captions  [text]    blank captions dropped
  label     text      scene class, "" when the set has none
  keywords  [text]    RSITMD keywords, [] elsewhere
  changed   int32     1 / 0 for change pairs, -1 otherwise

Records are checked (records.check_record) and every image is decoded once while preparing, so
missing, truncated or corrupt files stop the build with all of them named, or under
skip_bad_records are skipped and listed in the set's metadata.json ("bad_records") and the log. metadata.json also
holds the per-channel normalisation of the train split and where the annotations came from.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from rsjax.data import decode, records, sources
from rsjax.console import log
from rsjax.errors import InputError


@dataclasses.dataclass(frozen=True)
class SetSpec:
  """Where a named set's annotations may be, in order of preference: (format, file, image root)."""
  candidates: tuple[tuple[str, str, str], ...]
  require_captions: bool = True
  description: str = ""


def _jsonl_or(fmt: str, file: str, root: str, **kw) -> SetSpec:
  return SetSpec((("captions_jsonl", "captions.jsonl", ""), (fmt, file, root)), **kw)


SETS: dict[str, SetSpec] = {
    "rsicd": _jsonl_or("karpathy", "dataset_rsicd.json", "RSICD_images",
                       description="RSICD (Lu et al. 2018), 10,921 images, 31 classes"),
    "ucm_captions": _jsonl_or("karpathy", "dataset.json", "imgs",
                              description="UCM-Captions (Qu et al. 2016), 2,100 images"),
    "sydney_captions": _jsonl_or("karpathy", "dataset.json", "imgs",
                                 description="Sydney-Captions (Qu et al. 2016), 613 images"),
    "rsitmd": _jsonl_or("rsitmd", "dataset_RSITMD.json", "images",
                        description="RSITMD (Yuan et al. 2021), 4,743 images with keywords"),
    "nwpu_captions": _jsonl_or("nwpu", "dataset_nwpu.json", "NWPU_images",
                               description="NWPU-Captions, 31,500 images, 45 classes"),
    "levir_cc": SetSpec((("captions_jsonl", "captions.jsonl", ""),
                         ("levir_cc", "LevirCCcaptions.json", ""),
                         ("levir_mci", "train.txt", "")),
                        description="LEVIR-CC change captions (Liu et al. 2022), 10,077 pairs"),
    "rsscn7": SetSpec((("captions_jsonl", "captions.jsonl", ""), ("image_folder", "", "")),
                      require_captions=False, description="RSSCN7 scene classes, no captions"),
    "captions_jsonl": SetSpec((("captions_jsonl", "captions.jsonl", ""),),
                              description="any folder with a captions.jsonl"),
    "image_folder": SetSpec((("image_folder", "", ""),), require_captions=False,
                            description="<class>/<image> folders, no captions"),
}
# The ../shared/data sample folders are captions.jsonl sets under their own names.
for _name in ("rsicd_samples", "ucm_captions_samples", "sydney_captions_samples"):
  SETS[_name] = SETS["captions_jsonl"]


def find_annotations(name: str, manual_dir: str) -> tuple[str, str, str]:
  """(format, annotation path, image root) of the first candidate present in manual_dir."""
  tried = []
  for fmt, file, root in SETS[name].candidates:
    path = os.path.join(manual_dir, file) if file else manual_dir
    if (os.path.isfile(path) if file else os.path.isdir(path)):
      return fmt, path, os.path.join(manual_dir, root)
    tried.append(path)
  raise InputError(f"data set {name!r}: no annotations in {manual_dir} (looked for "
                   f"{', '.join(tried)})")


class AnnotatedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder; `builder_class(name)` makes the named subclass TFDS needs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First rsjax release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the folder with the annotations and images as --manual-dir."
  SET_NAME = ""

  # Nothing is downloaded, so there is no checksums file to look up beside the code. (TFDS's
  # lookup needs the importlib_resources backport for a builder inside a package.)
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None

  def __init__(self, *, skip_bad_records: bool = False, caption_field: str = "captions",
               stats_size: int = 64, **kwargs):
    self._skip_bad = skip_bad_records
    self._caption_field = caption_field
    self._stats_size = stats_size
    super().__init__(file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=SETS[self.SET_NAME].description,
        features=tfds.features.FeaturesDict({
            "key": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "image_b": tfds.features.Tensor(shape=(), dtype=np.object_),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "label": tfds.features.Text(),
            "keywords": tfds.features.Sequence(tfds.features.Text()),
            "changed": tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    fmt, path, root = find_annotations(self.SET_NAME, manual_dir)
    options = {"caption_field": self._caption_field} if fmt == "captions_jsonl" else {}
    spec = SETS[self.SET_NAME]
    recs, bad = records.collect(sources.read_source(fmt, path, root or None, **options),
                                require_captions=spec.require_captions)
    recs = self._decodable(recs, bad)
    records.check_bad(bad, self._skip_bad, path,
                      "pass --skip-bad-records to skip bad records and list them")
    records.require_records(recs, bad, path)
    by_split: dict[str, list] = {}
    for r in recs:
      by_split.setdefault(r.split, []).append(r)
    self.info.metadata.update({
        "format": fmt, "annotations": os.path.abspath(path), "skip_bad_records": self._skip_bad,
        "num_bad_records": len(bad), "bad_records": bad.to_json(),
        "normalization": self._stats(by_split.get("train") or recs),
    })
    return {split: self._generate_examples(rs, manual_dir) for split, rs in by_split.items()}

  def _decodable(self, recs: list, bad: records.BadRecords) -> list:
    """Decodes every image once (in full: a truncated file only fails at its last rows); the
    records that fail go to `bad`."""
    good = []
    for r in recs:
      try:
        for p in r.images:
          decode.decode_file(p)
      except records.BadRecordError as e:
        bad.add(r.where, type(e)(f"{r.where} [{r.key}]: {e}"))
        continue
      good.append(r)
    return good

  def _stats(self, recs: list) -> dict:
    """Per-channel mean / std of (up to 1,000) training images, decoded at `stats_size` px."""
    step = max(1, len(recs) // 1000)
    images = (decode.decode_resized(decode.read_bytes(r.images[0]), self._stats_size, r.images[0])
              for r in recs[::step])
    norm = decode.channel_stats(images)
    return {"mean": list(norm.mean), "std": list(norm.std)}

  def _generate_examples(self, recs: list, manual_dir: str):
    for r in recs:  # one record per image or pair (records.merge_duplicates): unique keys
      rel = "|".join(os.path.relpath(p, manual_dir) for p in r.images)
      yield rel, {
          "key": rel,
          "image": decode.read_bytes(r.images[0]),
          "image_b": decode.read_bytes(r.images[1]) if len(r.images) > 1 else b"",
          "captions": list(r.captions),
          "label": "" if r.label is None else str(r.label),
          "keywords": list(r.keywords),
          "changed": -1 if r.changed is None else int(r.changed),
      }


@functools.cache
def builder_class(name: str) -> type:
  """The TFDS builder class of a set in SETS (TFDS takes the data set's name from the class)."""
  if name not in SETS:
    raise InputError(f"unknown data set {name!r}; choose from {sorted(SETS)}")
  cls_name = "".join(part.title() for part in name.split("_")) + "Rsjax"
  return type(cls_name, (AnnotatedBuilder,), {"name": name, "SET_NAME": name,
                                              "__module__": __name__})


def prepare(name: str, manual_dir: str, data_dir: str, skip_bad_records: bool = False,
            caption_field: str = "captions") -> str:
  """Builds the set into data_dir; returns the prepared folder (<data_dir>/<name>/<version>)."""
  if not os.path.isdir(manual_dir):
    raise InputError(f"--manual-dir {manual_dir} is not a folder; give the folder with the "
                     f"{name} annotations and images")
  if not os.listdir(manual_dir):
    raise InputError(f"--manual-dir {manual_dir} is empty; give the folder with the {name} "
                     "annotations and images")
  builder = builder_class(name)(data_dir=data_dir, skip_bad_records=skip_bad_records,
                                caption_field=caption_field)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return os.fspath(builder.data_path)


def load_prepared(path: str):
  """A prepared set's TFDS builder, read from its folder (no builder class needed)."""
  if not os.path.isfile(os.path.join(path, "dataset_info.json")):
    raise InputError(f"no prepared data set in {path} (run `rsjax data prepare` first)")
  return tfds.builder_from_directory(path)
