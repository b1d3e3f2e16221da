"""dinoflow: a DINOv2-style self-supervised vision pipeline (curate → pretrain → distill → evaluate → register)."""

# The one definition of the version: pyproject.toml reads it (dynamic), the image tags derive from it.
__version__ = "0.1.0"
