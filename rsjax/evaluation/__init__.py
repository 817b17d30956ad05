"""Evaluation: encode a split on the mesh, then evaluators by name (registry.EVALUATORS).

encode.py     images / captions -> embeddings and hash codes; SplitEncodings (once per split)
recalls.py    `retrieval`: R@1/5/10 both ways and mR
hashing.py    `hashing`: Hamming mAP@K, P@K, radius precision, PR curve; the DUCH split
labels.py     `labels`: zero-shot top-1, class-prompt mAP, image->image mAP@20 (label-only sets)
gallery.py    `gallery`: text queries with their top images for the report
zero_shot.py  zero-shot classification of any labelled image set
registry.py   name -> evaluator, the shared EvalContext, evaluate_split / evaluate_run
workdir.py    a run's latest checkpoint evaluated on eval.split, written beside it
"""
