"""The `omnittt` command line. Importing it must not import torch or transformers."""

from omnittt.cli.app import app, main

__all__ = ["app", "main"]
