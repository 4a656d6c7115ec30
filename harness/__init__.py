"""halluc-harness: evaluate and reduce hallucination in vision-language models."""

from harness import _torchvision_compat

_torchvision_compat.install()

__version__ = "0.1.0"
