"""mulo: the μLO learned optimizer for PyTorch (Thérien et al. 2024), exact and fast.

>>> import mulo
>>> groups = mulo.mup.prepare(model)  # μP readout, μP init and per-tensor roles, in place (see the README)
>>> opt = mulo.MuLO(groups)           # μLO; MuLO(model.parameters()) is the SP small_fc_lopt
"""

from mulo import backends, mup
from mulo.celo2 import Celo2
from mulo.lopt import LOptNet, MetaWeights
from mulo.lopt.network import LOptConfig
from mulo.optim import MuLO, MuPWarning, PlaceholderMetaWeightsWarning

__version__ = "0.1.0"

__all__ = [
    "Celo2",
    "LOptConfig",
    "LOptNet",
    "MetaWeights",
    "MuLO",
    "MuPWarning",
    "PlaceholderMetaWeightsWarning",
    "backends",
    "mup",
]
