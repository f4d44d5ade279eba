"""Data: tfds builders (shapes, image_text, imagenet; video clips: video, moving_shapes),
the grain pipeline, tokenizers.

Entry points: `config.get_data_config()` / `config.validate()` / `config.clip_frames()`,
`pipeline.make_iterator(..., text=transforms.TextInputs(...))`,
`pipeline.to_global_arrays()`, `tokenizer.tokenize()`, `sources.build()` (behind
`python -m mdm_jax.build_data`), `shapes.build()`, `moving_shapes.build()`,
`video.build()`, and the tokenizer trainer behind
`python -m mdm_jax.train_tokenizer`.
See docs/data.md.
"""
