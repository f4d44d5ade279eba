"""Sampling a model: the jitted samplers, the library behind the sample command, images."""
