"""The learned routers' networks: the fast TRIM-Seq encoder computes exactly PyTorch's transformer encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.networks import SeqEncoder
from trim_env.features import AGG_FEATURES, agg_features, seq_features


def reference_encoding(encoder: SeqEncoder, observations: torch.Tensor) -> torch.Tensor:
    """The same readout over ``nn.TransformerEncoder``'s own forward on the full padded sequence."""
    valid = observations[..., 3] > 0.5
    valid[:, 0] = True
    hidden = encoder.encoder(encoder.embed(observations[..., :3]) + encoder.position, src_key_padding_mask=~valid)
    weights = valid.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1)
    proposal = hidden[torch.arange(hidden.shape[0]), valid.long().sum(1) - 1]
    return torch.cat([proposal, mean], dim=-1)


@pytest.mark.parametrize("shape", [(32, 2, 4, 64), (16, 1, 2, 32)])
def test_seq_encoder_computes_the_torch_transformer_encoder_function(shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    d_model, n_layers, n_heads, ff_dim = shape
    encoder = SeqEncoder(30, d_model, n_layers, n_heads, ff_dim).eval()
    lengths = torch.randint(1, 31, (200,))
    observations = torch.zeros(200, 30, 4)
    for row, length in enumerate(lengths):
        observations[row, :length, :3] = torch.rand(int(length), 3)
        observations[row, :length, 3] = 1.0
    with torch.no_grad():
        torch.testing.assert_close(encoder(observations.clone()), reference_encoding(encoder, observations.clone()), atol=1e-5, rtol=1e-5)


def test_seq_encoder_rejects_a_width_that_heads_do_not_divide() -> None:
    with pytest.raises(ValueError, match="d_model = 30 must be a multiple of n_heads = 4"):
        SeqEncoder(30, 30, 1, 4, 64)


def test_seq_statistics_are_the_agg_features_of_the_same_decisions(tiny_trees) -> None:
    nodes = np.flatnonzero(~tiny_trees.terminal & (tiny_trees.weak_child >= 0))
    encoder = SeqEncoder(statistics=True)
    with torch.no_grad():
        statistics = encoder(torch.as_tensor(seq_features(tiny_trees, nodes)))[:, -SeqEncoder.N_STATISTICS:].numpy()
    agg = agg_features(tiny_trees, nodes)
    names = ("prm", "tokens", "min_previous_prm", "step", "strong_steps_used")
    np.testing.assert_allclose(statistics, agg[:, [AGG_FEATURES.index(name) for name in names]], atol=1e-6)
