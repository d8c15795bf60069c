"""The torch.optim front end."""

from mulo.optim.mulo import MuLO, MuLOOptions, MuPWarning, PlaceholderMetaWeightsWarning

__all__ = ["MuLO", "MuLOOptions", "MuPWarning", "PlaceholderMetaWeightsWarning"]
