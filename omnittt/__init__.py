"""omnittt: long-context speech LLMs with Test-Time-Training layers."""

__version__ = "0.1.0"

# `AutoModelForCausalLM.from_pretrained(export)` after `import omnittt`, without importing transformers here
from omnittt import _hf_registration  # noqa: E402

_hf_registration.install()
