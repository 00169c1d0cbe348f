"""Loss terms, one per file (plain autograd, the maths in a pure function beside each module), their
composite, class weights from data, and the fused fast path for the terms that have one."""

from src.losses.bce import BCELoss, bce_loss
from src.losses.ce import CELoss, ce_loss
from src.losses.composite import CompositeLoss
from src.losses.dice import DiceLoss, dice_loss
from src.losses.focal import FocalLoss, focal_loss
from src.losses.lovasz import LovaszLoss, lovasz_loss
from src.losses.ohem import OHEMLoss, ohem_loss
from src.losses.tversky import TverskyLoss, tversky_loss

__all__ = [
    "BCELoss",
    "CELoss",
    "CompositeLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszLoss",
    "OHEMLoss",
    "TverskyLoss",
    "bce_loss",
    "ce_loss",
    "dice_loss",
    "focal_loss",
    "lovasz_loss",
    "ohem_loss",
    "tversky_loss",
]
