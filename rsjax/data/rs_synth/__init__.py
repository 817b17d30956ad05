"""RS-Synth: an embedded, procedurally generated remote-sensing image-caption data set.

Top-down scenes (uint8 RGB, square `image_size`) of one land cover (water, forest, farmland, bare
soil, urban, grassland), optional road / river, and 1-2 object groups (plane, ship, car, storage
tank, building) of a given count, size and 3x3-grid position, each with the context that makes it
look aerial (ships on water, planes on a runway, cars on a road or a parking lot). Five captions
per image come from `captions_grammar`.

Everything is a pure function of (spec.seed, split, index), so any subset renders identically and
generation parallelizes trivially. `load_or_generate` caches the splits on disk.

v2 keeps the v1 train/val/test splits byte for byte (their cache key stays "v1-<hash>") and adds
three labelled challenge subsets (`ChallengeSpec`, `generate_challenge`,
`load_or_generate_challenges`, cached under "v2-challenges-<hash>"), each example on its own
random streams:
  multiscale     v1 scenes, captions labelled "scene" (land cover, roads/rivers, kinds of
                 objects) or "object" (one group's count, size and place);
  small_objects  original/distractor pairs that differ only in one group of objects spanning at
                 most SMALL_MAX_PX pixels (all or some removed); captions state each image's count;
  temporal       before/after pairs: buildings added or removed in a grid cell, a road built
                 across a third of the tile, or no change; both dates get their own illumination
                 and sensor noise. Change captions, labels "changed" / "change" / "region_box".

Modules, each importing only those above it: primitives (noise, anti-aliased coverage), drawing
(land covers, rivers, roads, objects), groups (object groups and their context), scenes (v1
examples), challenges (v2 examples), pool (whole splits/subsets across processes), cache.
"""

from __future__ import annotations

from rsjax.data.rs_synth.cache import (cache_path, challenge_cache_path, load_or_generate,
                                       load_or_generate_challenges, spec_hash)
from rsjax.data.rs_synth.challenges import (CHALLENGES, SMALL_MAX_PX, ChallengeSpec,
                                            caption_labels, render_multiscale,
                                            render_small_objects, render_temporal)
from rsjax.data.rs_synth.pool import generate_challenge, generate_split
from rsjax.data.rs_synth.scenes import SPLITS, SynthSpec, render_example

__all__ = [
    "CHALLENGES", "SMALL_MAX_PX", "SPLITS", "ChallengeSpec", "SynthSpec", "cache_path",
    "caption_labels", "challenge_cache_path", "generate_challenge", "generate_split",
    "load_or_generate", "load_or_generate_challenges", "render_example", "render_multiscale",
    "render_small_objects", "render_temporal", "spec_hash",
]
