"""Plain-torch networks of the learned routers, shared by training (SB3) and exported routers.

Nothing here imports stable-baselines3, so an exported router loads with torch alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trim_env.features import STRONG_STEP_SCALE

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


class SeqEncoder(nn.Module):
    """A small transformer encoder over the padded step sequence (TRIM-Seq).

    Input ``(B, T, 4)`` with channels (prm, tokens, is_strong, mask); each valid step is embedded
    from its three values plus a learned position embedding, encoded with padding masked out, and
    read out as the last valid row (the proposed step) concatenated with the masked mean. With
    ``statistics`` the readout also carries plain poolings of the input sequence: the proposal's
    score and length, the minimum score of the earlier steps, the step index and the strong steps
    used (the aggregates TRIM-Agg is given). PPO then starts from what a threshold router knows
    and the transformer learns what the sequence adds; without them, at λ >= 0.015 it settled on
    never regenerating before learning where regenerating pays.

    The layers are ``nn.TransformerEncoderLayer`` modules (pre-norm, ReLU, no dropout) holding the
    weights, but :meth:`forward` computes them directly: with a head width of 8, PyTorch's CPU
    attention kernel dominates the cost, and plain batched matrix products compute the same
    function about twice as fast. Rows after the batch's longest sequence are padding in every
    sample and are cut before encoding (valid rows come first), which changes nothing either.

    :param max_steps: sequence length T.
    :param d_model: width of the embeddings.
    :param n_layers: transformer layers.
    :param n_heads: attention heads.
    :param ff_dim: width of the feed-forward layers.
    :param statistics: add the pooled input statistics to the readout.
    """

    #: Width of the pooled statistics (proposal score and tokens, min earlier score, step, strong steps).
    N_STATISTICS = 5

    def __init__(
        self, max_steps: int = 30, d_model: int = 32, n_layers: int = 2, n_heads: int = 4, ff_dim: int = 64, statistics: bool = False
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model = {d_model} must be a multiple of n_heads = {n_heads}")
        self.n_heads = n_heads
        self.max_steps = max_steps
        self.statistics = statistics
        self.embed = nn.Linear(3, d_model)
        self.position = nn.Parameter(torch.zeros(max_steps, d_model))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=ff_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.output_dim = 2 * d_model + (self.N_STATISTICS if statistics else 0)

    def _layer(self, layer: nn.TransformerEncoderLayer, hidden: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """One pre-norm encoder layer: ``x + attention(norm1(x))``, then ``x + ff(norm2(x))``."""
        batch, length, width = hidden.shape
        head_width = width // self.n_heads
        attention = layer.self_attn
        qkv = F.linear(layer.norm1(hidden), attention.in_proj_weight, attention.in_proj_bias)
        query, key, value = qkv.view(batch, length, 3, self.n_heads, head_width).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(head_width) + key_bias, dim=-1)
        mixed = (weights @ value).transpose(1, 2).reshape(batch, length, width)
        hidden = hidden + attention.out_proj(mixed)
        return hidden + layer.linear2(F.relu(layer.linear1(layer.norm2(hidden))))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        valid = observations[..., 3] > 0.5
        valid[:, 0] = True  # a row of pure padding would make attention undefined
        length = int(valid.sum(1).max())
        observations, valid = observations[:, :length], valid[:, :length]
        hidden = self.embed(observations[..., :3]) + self.position[:length]
        key_bias = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~valid, float("-inf"))
        for layer in self.encoder.layers:
            hidden = self._layer(layer, hidden, key_bias[:, None, None, :])
        weights = valid.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1)
        last = valid.long().sum(1) - 1
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        readout = [hidden[rows, last], mean]
        if self.statistics:
            earlier = valid & (torch.arange(length, device=valid.device)[None, :] < last[:, None])
            min_earlier = observations[..., 0].masked_fill(~earlier, 1.0).min(dim=1).values  # 1.0 before the first step
            strong_used = (observations[..., 2] * earlier).sum(1)
            readout.append(torch.stack([
                observations[rows, last, 0], observations[rows, last, 1], min_earlier,
                (last + 1).to(hidden.dtype) / self.max_steps, strong_used / STRONG_STEP_SCALE,
            ], dim=-1))
        return torch.cat(readout, dim=-1)


def mlp(input_dim: int, hidden: list[int], activation: str) -> nn.Sequential:
    """``Linear -> activation`` blocks, laid out like SB3's ``MlpExtractor`` so weights transfer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(input_dim, width), ACTIVATIONS[activation]()]
        input_dim = width
    return nn.Sequential(*layers)


class ActorNetwork(nn.Module):
    """Observation -> action logits: encoder (flatten or :class:`SeqEncoder`), MLP, linear head."""

    def __init__(self, observation: str, observation_dim: int, hidden: list[int], activation: str, seq: dict | None = None) -> None:
        super().__init__()
        if observation == "seq":
            self.encoder: nn.Module = SeqEncoder(**(seq or {}))
            features = self.encoder.output_dim
        else:
            self.encoder = nn.Flatten()
            features = observation_dim
        self.policy_net = mlp(features, hidden, activation)
        self.action_net = nn.Linear(hidden[-1] if hidden else features, 2)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.action_net(self.policy_net(self.encoder(observations)))
