"""Loss terms, one per file (plain autograd, the maths in a pure function beside each module), their
composite, class weights from data, and the fused fast path for the terms that have one."""

from src.losses.bce import BCELoss, bce_loss
from src.losses.ce import CELoss, ce_loss
from src.losses.composite import CompositeLoss
from src.losses.dice import DiceLoss, dice_loss
from src.losses.focal import FocalLoss, focal_loss

__all__ = [
    "BCELoss",
    "CELoss",
    "CompositeLoss",
    "DiceLoss",
    "FocalLoss",
    "bce_loss",
    "ce_loss",
    "dice_loss",
    "focal_loss",
]
