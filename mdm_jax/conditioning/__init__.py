"""Where the text encoder meets the data, the train step and the sampler."""
