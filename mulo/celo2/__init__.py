"""Celo2 (Moudgil, Knyazev, Belilovsky, 2026): mulo's second learned optimizer (docs/CELO2.md).

- :class:`Celo2` — the ``torch.optim.Optimizer`` (:mod:`mulo.celo2.optimizer`);
- :class:`Celo2Net` — the split-input meta-network and its published weight layout (:mod:`mulo.celo2.network`);
- :mod:`mulo.celo2.reference` — the rule in plain PyTorch (the oracle) and the pass plan for fused kernels;
- :mod:`mulo.celo2.spec` — its constants; :mod:`mulo.celo2.pretrained` — weights shipped with mulo.
"""

from mulo.celo2.network import Celo2Config, Celo2Net, Celo2Weights
from mulo.celo2.optimizer import Celo2

__all__ = ["Celo2", "Celo2Config", "Celo2Net", "Celo2Weights"]
