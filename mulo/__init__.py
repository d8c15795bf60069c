"""mulo: the μLO learned optimizer for PyTorch (Thérien et al. 2024), exact and fast.

>>> import mulo
>>> opt = mulo.MuLO(mulo.mup.param_groups(model))  # μLO; MuLO(model.parameters()) is SP small_fc_lopt
"""

from mulo import backends, mup
from mulo.lopt import LOptNet, MetaWeights
from mulo.lopt.network import LOptConfig
from mulo.optim import MuLO, PlaceholderMetaWeightsWarning

__version__ = "0.1.0"

__all__ = ["LOptConfig", "LOptNet", "MetaWeights", "MuLO", "PlaceholderMetaWeightsWarning", "backends", "mup"]
