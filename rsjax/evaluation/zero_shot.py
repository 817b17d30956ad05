"""Zero-shot scene classification: class names in prompt templates, top-1 accuracy.

Used on any labelled image set (`rsjax eval --zero-shot PATH`) and, through the class
embeddings, by the label-relevance evaluator.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rsjax import metrics
from rsjax.evaluation.encode import encode_in_batches, encoders

DEFAULT_TEMPLATES = (
    "a satellite image of {}.",
    "an aerial photograph of {}.",
    "a remote sensing image of {}.",
    "{}",
)


def class_text(name: str) -> str:
  """A class name as it reads in a caption: 'dense_residential' -> 'dense residential'."""
  return name.replace("_", " ").replace("-", " ").strip().lower()


def class_embeddings(enc_txt: Callable, params, tokenizer, class_names: Sequence[str],
                     templates: Sequence[str], context_length: int, mesh: Mesh,
                     batch_size: int) -> np.ndarray:
  """Mean of the unit-norm prompt embeddings of each class, renormalised: [C, E]."""
  prompts = [t.format(class_text(c)) for c in class_names for t in templates]
  ids = tokenizer.encode(prompts, context_length)
  with jax.set_mesh(mesh):
    emb = encode_in_batches(enc_txt, params, ids, batch_size, mesh)
  emb = emb.reshape(len(class_names), len(templates), -1).mean(1)
  return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def zero_shot(model, params, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
              tokenizer, context_length: int, mesh: Mesh, batch_size: int,
              templates: Sequence[str] = DEFAULT_TEMPLATES) -> dict:
  """Top-1 zero-shot accuracy of images [N, H, W, 3] uint8 with labels [N] (percent)."""
  enc_img, enc_txt = encoders(model)
  classes = class_embeddings(enc_txt, params, tokenizer, class_names, templates, context_length,
                             mesh, batch_size)
  with jax.set_mesh(mesh):
    img = encode_in_batches(enc_img, params, images, batch_size, mesh)
  pred = np.asarray(metrics.zero_shot_predictions(jnp.asarray(img), jnp.asarray(classes)))
  out = metrics.classification_metrics(pred, labels, list(class_names))
  out.update(num_images=int(len(images)), num_classes=len(class_names), templates=list(templates))
  return out
