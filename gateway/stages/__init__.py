"""The pipeline's stages, one small module each; their order is written down once, in
``gateway/pipeline.py``."""
