"""dinoflow: a DINOv2-style self-supervised vision pipeline (curate → pretrain → distill → evaluate → register)."""

__version__ = "0.1.0"
