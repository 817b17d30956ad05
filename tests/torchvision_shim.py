"""Imports open_clip beside the CPU torch 2.13.0 wheel for the parity tests.

open_clip imports torchvision, and the registry's torchvision 0.28.0 wheel fails at import with
"operator torchvision::nms does not exist": its compiled ops do not load beside the CPU torch build,
so registering their meta kernels fails. Declaring the two op schemas it registers kernels for
(`nms`, `qnms`) before the import lets torchvision, and so open_clip, import; nothing the tests use
calls these ops (they serve detection models).
"""

from __future__ import annotations

_LIBRARY = None


def import_open_clip():
  """open_clip (torch and open_clip_torch are test dependencies, so a missing one fails)."""
  global _LIBRARY
  import torch

  if _LIBRARY is None and not hasattr(torch.ops.torchvision, "nms"):
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
  import open_clip

  return open_clip
