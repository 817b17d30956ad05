"""Data sets by name: what `config.data.name` selects, and the loader that builds it.

"rs_synth" is the embedded RS-Synth set (rsjax/data/synthetic.py); "annotated" reads an annotation
file and its images (rsjax/data/annotated.py, e.g. ../shared/data/rsicd_samples); "tfds" and
"webscale" stream a prepared set or a converted corpus (rsjax/data/prepared.py). Each loader
returns a `RetrievalData` (rsjax/data/types.py). Only callers above the data package import this
module; the loaders never do.
"""

from __future__ import annotations

import ml_collections

from rsjax.data.annotated import load_annotated
from rsjax.data.change_synthetic import load_rs_synth_change
from rsjax.data.levir_change import load_levir_cc_change
from rsjax.data.synthetic import load_rs_synth
from rsjax.data.types import RetrievalData
from rsjax.errors import ConfigError


def load_prepared(*args, **kwargs) -> RetrievalData:
  from rsjax.data.prepared import load_prepared as load  # TFDS loads only when asked for
  return load(*args, **kwargs)


def load_webscale(*args, **kwargs) -> RetrievalData:
  from rsjax.data.prepared import load_webscale as load  # TFDS loads only when asked for
  return load(*args, **kwargs)


LOADERS = {"rs_synth": load_rs_synth, "annotated": load_annotated, "tfds": load_prepared,
           "webscale": load_webscale, "rs_synth_change": load_rs_synth_change,
           "levir_cc_change": load_levir_cc_change}


def load_retrieval_data(config: ml_collections.ConfigDict, workdir: str,
                        progress: bool = True) -> RetrievalData:
  name = config.data.name
  if name not in LOADERS:
    raise ConfigError(f"config key 'data.name': unknown data set '{name}', choose from {sorted(LOADERS)}")
  return LOADERS[name](config.data, workdir, config.model.text.context_length,
                       config.model.text.vocab_size, progress)
