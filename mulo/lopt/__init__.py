"""The learned-optimizer network (small_fc_lopt's 39→32→32→2 MLP) and its weight files."""

from mulo.lopt.network import LOptNet, MetaWeights

__all__ = ["LOptNet", "MetaWeights"]
