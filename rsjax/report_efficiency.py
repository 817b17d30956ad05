"""The report's efficiency section: what `rsjax eval` measured (rsjax/evaluation/efficiency.py),
or the command that measures it when the run was only trained."""

from __future__ import annotations


def rows(full: dict | None) -> tuple[list[str], list[list[str]]] | None:
  """Header and rows of the efficiency table, or None when eval_full.json has no block."""
  e = (full or {}).get("efficiency")
  if not e:
    return None
  p, b, q = e["params"], e["bytes_per_image"], e["query_ms"]
  out = [["parameters", f"{p['total']:,} (image {p['image']:,}, text {p['text']:,}, "
                        f"other {p['other']:,})"],
         ["FLOPs per image", f"{e['flops_per_image'] / 1e9:.4f} G"],
         ["FLOPs per caption", f"{e['flops_per_caption'] / 1e9:.4f} G"],
         ["encoding", f"{e['images_per_s']:.1f} images/s on {e['host']}"],
         ["index bytes per image", ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in b.items())],
         ["text query (top-10)", ", ".join(f"{k} {v:.2f} ms" for k, v in q.items())
          + f" over {e['num_images_searched']} images"]]
  return ["figure", "value"], out


MISSING = ("No efficiency figures: `rsjax eval` measures them (parameters, FLOPs, images/s, "
           "index bytes, query latency).")
