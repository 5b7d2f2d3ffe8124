"""omnittt: long-context speech LLMs with Test-Time-Training layers."""

__version__ = "0.1.0"
