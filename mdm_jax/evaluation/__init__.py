"""Evaluation: FID (a Flax FID InceptionV3), the CLIP score (Flax CLIP towers), and the
shapes judge; `python -m mdm_jax.evaluate` runs them on samples or a folder of images.

Modules: `inception` and `fid` (features, statistics, Fréchet distance), `clip` (towers,
tokenizer, score), `judge` and `train_judge` (the shapes judge), `metrics` (what a set of
images is measured by, and reference statistics), `images` (folders and data sets).
"""
