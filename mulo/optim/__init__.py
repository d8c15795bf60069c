"""The torch.optim front end."""

from mulo.optim.mulo import MuLO, MuLOOptions, PlaceholderMetaWeightsWarning

__all__ = ["MuLO", "MuLOOptions", "PlaceholderMetaWeightsWarning"]
