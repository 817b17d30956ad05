"""How a conversion refuses: `ConversionError`, whose message names every offending key.

Every step (reading, inferring, placing, loading for training, exporting) collects all of its
problems before raising, so one run shows the whole list rather than the first item of it.
"""

from __future__ import annotations
from rsjax.errors import InputError


class ConversionError(InputError):
  """A checkpoint that cannot be converted; the message names every offending key."""


def listed(items: list[str]) -> str:
  """Every item on its own line: a refusal names all offending keys, however many."""
  return "\n  " + "\n  ".join(items)
