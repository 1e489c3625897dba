"""Steering what a model makes, for every family: explicit latents in and out (`codes`),
directions and edits (`directions`), interpolation and style mixing, and projection of real
images into a model's latent space. Everything here generates: it never imports training.
"""
