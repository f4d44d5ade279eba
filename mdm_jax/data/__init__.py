"""Data: tfds builders (shapes, image_text, imagenet), the grain pipeline, tokenizers.

Entry points: `config.get_data_config()` / `config.validate()`, `pipeline.make_iterator()`,
`pipeline.to_global_arrays()`, `tokenizer.tokenize()`, `shapes.build()`, and the commands
`python -m mdm_jax.build_data` and `python -m mdm_jax.train_tokenizer`.
See docs/data.md.
"""
