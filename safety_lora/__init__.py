"""safety-lora: a content-safety control layer for diffusion pipelines."""

__version__ = "0.1.0"
