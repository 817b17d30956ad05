"""PyTorch CLIP checkpoints (OpenAI, open_clip, RemoteCLIP, GeoRSCLIP) -> rsjax parameters, and back.

`convert_file(FILE, OUT)` reads a state dict (readers: OpenAI's TorchScript archives, pickled
`.pt`/`.bin` files, `.safetensors`), infers the architecture from the tensor shapes or takes `arch`
(infer), places every tensor in the rsjax parameter tree (keymap) and writes the converted folder
OUT (folder). Every key is accounted for: a key that has no place, a shape that does not fit, or a
parameter that no key fills stops the conversion with all of them named (errors).
`rsjax train --set init.checkpoint=OUT` starts from the converted weights (init_params:
`load_init_params`); `to_open_clip` maps rsjax parameters back to an open_clip state dict
(export_open_clip).
"""

from __future__ import annotations

from rsjax.convert.errors import ConversionError
from rsjax.convert.export_open_clip import open_clip_config, save_open_clip, to_open_clip
from rsjax.convert.folder import (FORMAT, INFO_FILE, VOCAB_NAME, convert_file, load_converted,
                                  read_info)
from rsjax.convert.infer import clip_model_config, infer_model, parameter_shapes
from rsjax.convert.init_params import load_init_params
from rsjax.convert.keymap import rsjax_path, scan_layout, torch_key, unscan_layout
from rsjax.convert.readers import read_checkpoint

__all__ = [
    "ConversionError", "FORMAT", "INFO_FILE", "VOCAB_NAME", "clip_model_config", "convert_file",
    "infer_model", "load_converted", "load_init_params", "open_clip_config", "parameter_shapes",
    "read_checkpoint", "read_info", "rsjax_path", "save_open_clip", "scan_layout", "to_open_clip",
    "torch_key", "unscan_layout",
]
