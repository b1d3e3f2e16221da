"""DINOv2 losses: DINO (CLS), iBOT (masked patches), KoLeo; teacher centering and Sinkhorn-Knopp."""

from dinoflow.losses.dino import DINOLoss
from dinoflow.losses.ibot import iBOTPatchLoss
from dinoflow.losses.koleo import KoLeoLoss
from dinoflow.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DINOLoss", "iBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp"]
