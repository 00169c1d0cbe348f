"""The fused fast path of the loss terms that have one (see engine.py)."""

from src.losses.fused.engine import CHUNK_PIXELS, FusedTerm, fused_terms

__all__ = ["CHUNK_PIXELS", "FusedTerm", "fused_terms"]
