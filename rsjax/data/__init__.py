"""Data: RS-Synth, data set loaders, tokenizers and grain pipelines."""
