"""Sampling: the sampler registry, what to generate (`GenerationConfig`) and the generation function."""
