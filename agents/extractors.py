"""stable-baselines3 feature extractors for the learned routers."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from agents.networks import SeqEncoder


class SeqTransformerExtractor(BaseFeaturesExtractor):
    """TRIM-Seq features: a :class:`~agents.networks.SeqEncoder` over the ``(T, 4)`` step sequence.

    :param observation_space: the env's ``seq`` Box.
    :param d_model: width of the embeddings.
    :param n_layers: transformer layers.
    :param n_heads: attention heads.
    :param ff_dim: width of the feed-forward layers.
    :param statistics: add pooled input statistics to the readout.
    """

    def __init__(
        self, observation_space: spaces.Box, d_model: int = 32, n_layers: int = 2, n_heads: int = 4, ff_dim: int = 64,
        statistics: bool = False,
    ) -> None:
        encoder = SeqEncoder(observation_space.shape[0], d_model, n_layers, n_heads, ff_dim, statistics)
        super().__init__(observation_space, features_dim=encoder.output_dim)
        self.encoder = encoder

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.encoder(observations)
