"""Evaluation: encode a split on the mesh, then evaluators by name (registry.EVALUATORS).

encode.py     images / captions -> embeddings and hash codes; SplitEncodings (once per split)
recalls.py    `retrieval`: R@1/5/10 both ways and mR
hashing.py    `hashing`: Hamming mAP@K, P@K, radius precision, PR curve; the DUCH split
labels.py     `labels`: zero-shot top-1, class-prompt mAP, image->image mAP@20 (label-only sets)
gallery.py    `gallery`: text queries with their top images (and heat maps) for the report
change.py     `change`: before/after retrieval both ways, changed / unchanged, no-change accuracy
captioning.py retrieval as captioning (BLEU-4, CIDEr-D of each pair's top caption)
hash_diagnostics.py  per-bit balance, bit correlation and saturation of a hashing head's codes
heatmaps.py   where a query or word matches in an image: occlusion (occlusion.py) or cosine maps
robustness.py a split re-encoded under each corruption and severity (`rsjax eval --robustness`)
efficiency.py parameters, FLOPs, encode speed, index bytes and query latency (every report)
zero_shot.py  zero-shot classification of any labelled image set
registry.py   name -> evaluator, the shared EvalContext, evaluate_split / evaluate_run
workdir.py    a run's latest checkpoint evaluated on eval.split, written beside it
"""
