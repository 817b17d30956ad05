"""`rsjax convert`: a PyTorch CLIP checkpoint (OpenAI, open_clip, RemoteCLIP, GeoRSCLIP) -> rsjax."""

from __future__ import annotations


def run(args) -> int:
  from rsjax.convert import convert_file

  # A ConversionError names every offending key or the file; rsjax.cli reports it (exit 2).
  info = convert_file(args.checkpoint, args.out, arch=args.arch, activation=args.activation,
                      unsafe_pickle=args.unsafe_pickle)
  print(f"fine-tune it with: rsjax train --config configs/finetune_clip_rsicd.py:init={args.out} "
        f"--workdir WORKDIR   ({info['arch']}, image size {info['image_size']})")
  return 0


def register(sub) -> None:
  p = sub.add_parser(
      "convert", help="convert a PyTorch CLIP checkpoint into an rsjax checkpoint",
      description="Reads a CLIP state dict (OpenAI TorchScript or pickle, open_clip .pt/.bin/"
                  ".safetensors, RemoteCLIP, GeoRSCLIP), infers the architecture from its shapes and "
                  "writes OUT/params (orbax) and OUT/converted.json. Stops, naming every such key, "
                  "when a key has no place or a shape does not fit.")
  p.add_argument("--checkpoint", required=True, help="the PyTorch checkpoint file")
  p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
  p.add_argument("--arch", default=None,
                 help="registry model name (e.g. ViT-B-32-quickgelu) instead of inferring it")
  p.add_argument("--activation", choices=("gelu", "quick_gelu"), default=None,
                 help="override the activation (shapes cannot tell; default: quick_gelu for "
                      "OpenAI's own files, else gelu)")
  p.add_argument("--unsafe-pickle", action="store_true",
                 help="allow torch.load to unpickle arbitrary objects (trusted files only)")
  p.set_defaults(run=run)
