"""The sampling web page (python -m mdm_jax.serve): a run loaded once, sampled on request.

session.py   the loaded-once run: params, text encoder, mesh, compiled programs, one lock
requests.py  what the page sends, checked and turned into the sampling library's Options
programs.py  the small cache of compiled sampling programs
previews.py  the second program: the x̂0 of every level every few steps, sent to the host
results.py   a request's files: the sample command's PNGs and their zip
page.py      the Gradio page and its queue

The final images come from the sampling library's own program and writers
(generate.sample_levels, generate.stage_sampler, images.write_images), so they are the
PNGs `python -m mdm_jax.sample` writes for the same settings.
"""
