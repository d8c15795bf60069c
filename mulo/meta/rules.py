"""The update rule being meta-trained (``mulo meta-train --rule mulo|celo2``): what the unroll and the trainer
need to know about it, behind one small interface.

A rule turns flat meta-parameters θ into a population's meta-weights, allocates a population tensor's optimizer
state, names the population step of a backend, gives each tensor's inner learning rate, and converts θ to and
from its network (the weights file a user loads). :class:`MuLORule` is μLO (``LOptNet``, θ of 2,402 numbers,
:mod:`mulo.backends.population`); :class:`Celo2Rule` is Celo2 (``Celo2Net``, θ of 347 numbers,
:mod:`mulo.celo2.population`: rank ≥ 2 tensors through the learned rule, biases through AdamW, the step's RMS
set by ``lr``).
"""

from __future__ import annotations

import dataclasses
import os

import torch

from mulo.lopt.network import LOptConfig, LOptNet
from mulo.meta import theta as mulo_theta

RULES = ("mulo", "celo2")


@dataclasses.dataclass(frozen=True)
class MuLORule:
    """μLO: the step size is inside the meta-weights (``config.step_mult``); a tensor's lr is its μP lr scale."""

    config: LOptConfig
    name = "mulo"
    lr = 1.0
    optimizer = "MuLO"

    def theta_size(self) -> int:
        return mulo_theta.theta_size(self.config)

    def population_weights(self, thetas: torch.Tensor):
        return mulo_theta.population_weights(thetas, self.config)

    def init_state(self, param: torch.Tensor) -> dict:
        from mulo.backends.population import init_population_state

        return init_population_state(param, self.config.layout)

    def step_fn(self, backend: str = "reference", device: torch.device | str = "cpu"):
        from mulo.backends.population import backend_population_step

        return backend_population_step(backend, device, self.config.capabilities)

    def fresh_net(self, generator: torch.Generator) -> LOptNet:
        return LOptNet(self.config, generator=generator)

    def load_net(self, source: str | os.PathLike) -> LOptNet:
        """The meta-weights to start from. Weights without the nominal term start a run that has one
        (``--nominal``) with a zero third head: the nominal term at exactly α at first, the rest unchanged."""
        net = LOptNet.from_pretrained(source)
        if self.config.nominal is not None and net.config.nominal is None:
            net = mulo_theta.with_nominal_head(net, self.config.nominal)
        if mulo_theta.theta_size(net.config) != self.theta_size():
            shape = f"39→32→32→{self.config.output_size}"
            raise ValueError(f"init weights {source} do not have the {shape} layout this run meta-trains")
        return net

    def flatten(self, net: LOptNet) -> torch.Tensor:
        return mulo_theta.flatten(net)

    def to_net(self, theta: torch.Tensor, info: dict) -> LOptNet:
        return mulo_theta.to_net(theta, dataclasses.replace(self.config, info=info))


@dataclasses.dataclass(frozen=True)
class Celo2Rule:
    """Celo2: ``lr`` is the inner runs' learning rate (the RMS of every weight matrix's step; times each
    tensor's lr scale and the inner schedule), ``orthogonalize`` Celo2 (True) or Celo2-base."""

    lr: float = 1e-3
    orthogonalize: bool = True
    name = "celo2"
    optimizer = "Celo2"

    @property
    def config(self):
        from mulo.celo2 import Celo2Config

        return Celo2Config()

    @property
    def options(self):
        from mulo.celo2.population import PopulationOptions

        return PopulationOptions(orthogonalize=self.orthogonalize)

    def theta_size(self) -> int:
        from mulo.celo2 import population

        return population.theta_size(self.config)

    def population_weights(self, thetas: torch.Tensor):
        from mulo.celo2 import population

        return population.population_weights(thetas, self.config)

    def init_state(self, param: torch.Tensor) -> dict:
        from mulo.celo2 import population

        return population.init_population_state(param)

    def step_fn(self, backend: str = "reference", device: torch.device | str = "cpu"):
        from mulo.celo2 import population

        return population.backend_population_step(backend, device, self.options)

    def fresh_net(self, generator: torch.Generator):
        from mulo.celo2 import Celo2Net

        return Celo2Net(self.config, generator=generator)

    def load_net(self, source: str | os.PathLike):
        from mulo.celo2 import Celo2Net

        net = Celo2Net.from_pretrained(source)
        if net.config != self.config:
            raise ValueError(f"init weights {source} are not the published 30→8→8→3 ReLU Celo2 network")
        return net

    def flatten(self, net) -> torch.Tensor:
        from mulo.celo2 import population

        return population.flatten(net)

    def to_net(self, theta: torch.Tensor, info: dict):
        from mulo.celo2 import Celo2Config, population

        return population.to_net(theta, dataclasses.replace(Celo2Config(), info=info))


def lopt_config_for(config) -> LOptConfig:
    """μLO's non-θ settings of a :class:`~mulo.meta.presets.MetaTrainConfig`."""
    return LOptConfig(step_mult=config.step_mult, time_clamp=config.time_clamp, nominal=config.nominal)


def rule_for(config) -> MuLORule | Celo2Rule:
    """The rule a :class:`~mulo.meta.presets.MetaTrainConfig` meta-trains."""
    if config.rule == "celo2":
        return Celo2Rule(lr=config.inner_lr, orthogonalize=config.orthogonalize)
    return MuLORule(lopt_config_for(config))


__all__ = ["RULES", "Celo2Rule", "MuLORule", "lopt_config_for", "rule_for"]
