"""Checkpoint files -> state dicts {torch key: numpy array}.

Reads OpenAI's TorchScript archives, pickled `.pt`/`.bin` files (nested under `state_dict`,
`model` or `module`, keys prefixed `module.`) and `.safetensors`. torch is needed only for the
pickles and archives; `.safetensors` are read with numpy when torch is absent.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from rsjax.convert.errors import ConversionError, listed


def is_torchscript(path: str) -> bool:
  """Whether `path` is a TorchScript archive (a zip with code/ or constants.pkl inside)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def to_numpy(value) -> np.ndarray:
  """A torch tensor or array-like -> numpy; half/bfloat16 weights become float32."""
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _first_line(error: BaseException) -> str:
  """'TypeName: first line of the message', for a one-line refusal."""
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def import_torch(path: str):
  """torch, or a ConversionError saying that reading/writing `path` needs it."""
  try:
    import torch  # optional: only pickles and TorchScript archives need it
  except ImportError:
    raise ConversionError(f"{path}: reading PyTorch pickles needs torch (pip install torch), or "
                          "convert the file to .safetensors first") from None
  return torch


def read_checkpoint(path: str, unsafe_pickle: bool = False) -> tuple[dict[str, np.ndarray], str]:
  """A checkpoint file -> (its tensors by key as float32/int numpy arrays, source kind).

  Pickled files are loaded with torch.load(weights_only=True), which runs no code from the file;
  `unsafe_pickle` lifts that for files from a trusted source that pickle other objects.
  """
  if not os.path.isfile(path):
    what = "is a folder, not a file" if os.path.isdir(path) else "not found"
    raise ConversionError(f"checkpoint file {what}: {path}; give the PyTorch checkpoint file "
                          "(.pt, .bin or .safetensors)")
  if path.endswith(".safetensors"):
    try:
      try:
        import torch  # noqa: F401  (reads bfloat16, which numpy cannot)
        from safetensors.torch import load_file
        tensors = {k: to_numpy(v) for k, v in load_file(path).items()}
      except ImportError:
        from safetensors.numpy import load_file
        tensors = {k: np.asarray(v) for k, v in load_file(path).items()}
    except OSError:
      raise
    except Exception as e:  # noqa: BLE001  safetensors' own error type: the file is not one
      raise ConversionError(f"{path}: not a readable .safetensors file ({_first_line(e)})"
                            ) from None
    return tensors, "safetensors"
  torch = import_torch(path)
  if is_torchscript(path):
    try:
      module = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001  torch's errors for a damaged archive vary
      raise ConversionError(f"{path}: a TorchScript archive torch.jit.load cannot read "
                            f"({_first_line(e)})") from None
    return {k: to_numpy(v) for k, v in module.state_dict().items()}, "torchscript"
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
  except Exception as e:
    text = str(e)
    if not unsafe_pickle and "Weights only load failed" in text:
      why = next((line.strip() for line in text.splitlines() if "WeightsUnpickler" in line),
                 text.splitlines()[0] if text else "")
      raise ConversionError(
          f"{path}: torch.load could not read it safely ({why}). If the file comes from a source "
          "you trust and pickles other objects, rerun with --unsafe-pickle") from e
    raise ConversionError(f"{path}: not a PyTorch checkpoint torch.load can read "
                          f"({_first_line(e)}); give a .pt, .bin or .safetensors state dict"
                          ) from e
  tensors, nest = flatten_checkpoint(obj, path)
  return tensors, "pickle" + nest


def flatten_checkpoint(obj, path: str) -> tuple[dict[str, np.ndarray], str]:
  """Finds the state dict (top level, or under 'state_dict' / 'model'), strips 'module.'.
  Returns it and where it was found, naming what else the file held (e.g. optimizer state)."""
  if not isinstance(obj, dict):
    raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  where = ""
  for nest in ("state_dict", "model", "module"):
    if nest in obj and isinstance(obj[nest], dict):
      others = sorted(str(k) for k in obj if k != nest)
      where = f" under '{nest}'" + (f" (also held, not weights: {', '.join(others)})" if others else "")
      obj = obj[nest]
      break
  tensors = {}
  bad = []
  for key, value in obj.items():
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
      tensors[key] = to_numpy(value)
    else:
      bad.append(f"{key} ({type(value).__name__})")
  if bad:
    raise ConversionError(f"{path}: entries that are not tensors:" + listed(bad))
  if tensors and all(k.startswith("module.") for k in tensors):
    tensors = {k[len("module."):]: v for k, v in tensors.items()}
    where += ", keys prefixed 'module.'"
  return tensors, where
