"""TRIM-Agg and TRIM-Seq as routers: a plain-torch actor network, trained with PPO, exported as safetensors.

:class:`ActorRouter` is the router both policies share (``policy=agg``: an MLP over the aggregate
features; ``policy=seq``: a transformer over the step sequence). Its :meth:`ActorRouter.fit` runs
:func:`agents.ppo.train_router` (stable-baselines3 is imported only then); loading an exported
actor needs torch alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file

from agents.base import Fitted, Router, RouterSettings, TrainingData
from agents.checkpoints import CHECKPOINT_DIR
from agents.export import CONFIG_FILE, WEIGHTS_FILE, write_router
from agents.networks import ACTIVATIONS, ActorNetwork
from trim_env.features import LAMBDA_FEATURE, LambdaRange, with_lambda

#: SB3's own save of the trained model, beside the exported actor (for resuming or inspection).
SB3_MODEL_FILE = "sb3_model.zip"
#: Upper bound on a hidden layer's width: far above what routing needs, low enough to catch typos.
MAX_HIDDEN_WIDTH = 4096


#: More parallel episodes than this is a typo, not a setting: each holds its own state and
#: observation rows, and 100,000 of them grow memory for minutes before the first step.
MAX_N_ENVS = 4096


@dataclass
class PPOSettings:
    """PPO settings for routing (short undiscounted episodes): the ``ppo`` config group.

    The single home of these defaults: Hydra stores this dataclass as ``ppo/default``
    (:func:`agents.cli.common.register_schemas`), and a policy may select another ``ppo`` option
    in its defaults list. The training budget is the policy's ``total_timesteps``.
    """

    #: Parallel episodes of the batched env, each walking the training queries in its own seeded
    #: order. Many episodes per step amortise the per-step array work and the batched growth of
    #: missing nodes (64 x 32 steps = the same 2,048 decisions per rollout as 8 x 256).
    n_envs: int = 64
    #: Steps per env per rollout.
    n_steps: int = 32
    batch_size: int = 256
    n_epochs: int = 5
    learning_rate: float = 3e-4
    #: No discounting: the reward for the answer arrives at the end of a short episode.
    gamma: float = 1.0
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    #: Entropy bonus, decayed linearly from start to end over training.
    ent_coef_start: float = 0.02
    ent_coef_end: float = 0.0
    #: Share of training over which the env's λ rises linearly from 0 to its target. With the full
    #: λ from the start, the random initial policy's regenerations cost more than they gain, and at
    #: λ >= 0.015 PPO can settle on never regenerating before it learns where regenerating pays.
    lambda_warmup_fraction: float = 0.3
    #: Evaluate on the validation queries every this many steps.
    eval_every: int = 10_000
    #: Write a resumable checkpoint (``<run dir>/checkpoints/``) at the first rollout boundary
    #: after every this many steps; 0: none. ``resume=PATH`` continues a killed run from its latest.
    checkpoint_every: int = 50_000
    device: str = "cpu"
    #: Torch threads. One is fastest for these small networks on a 2-core machine; more threads
    #: wait on each other whenever another process holds a core.
    torch_threads: int = 1

    def check(self) -> PPOSettings:
        """Refuse values PPO cannot run with; each message names the ``ppo.`` key."""
        if not 0.0 <= self.lambda_warmup_fraction < 1.0:
            raise ValueError(f"ppo.lambda_warmup_fraction = {self.lambda_warmup_fraction} must be in [0, 1)")
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "eval_every", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} = {getattr(self, name)} must be at least 1")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise ValueError(f"ppo.checkpoint_every = {self.checkpoint_every!r} must be an integer >= 0 (0: no checkpoints)")
        if self.n_envs > MAX_N_ENVS:
            raise ValueError(f"ppo.n_envs = {self.n_envs} is more parallel episodes than {MAX_N_ENVS}; use a smaller number")
        for name in ("learning_rate", "clip_range", "vf_coef", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ppo.{name} = {getattr(self, name)} must be > 0")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ppo.{name} = {getattr(self, name)} must be in [0, 1]")
        return self


#: The ``ppo`` options besides ``default``, by name (stored in Hydra's ConfigStore beside it). A
#: λ-conditioned policy (``ppo: conditioned``) learns every λ's trade-off from the same rollouts, so
#: it reuses each rollout more (10 epochs) over larger minibatches (1,024), which keeps an update's
#: cost near the default's (measured: scripts/bench_conditioned.py, README).
PPO_OPTIONS: dict[str, PPOSettings] = {"conditioned": PPOSettings(n_epochs=10, batch_size=1024)}


@dataclass
class SeqSettings:
    """The TRIM-Seq transformer (:class:`agents.networks.SeqEncoder`; ``observation: seq`` only).

    :param d_model: width of the embeddings.
    :param n_layers: transformer layers.
    :param n_heads: attention heads (``d_model`` must be a multiple).
    :param ff_dim: width of the feed-forward layers.
    :param statistics: the readout also carries the proposal's score and length, the min earlier
        score, the step and the strong steps used.
    """

    d_model: int = 16
    n_layers: int = 1
    n_heads: int = 2
    ff_dim: int = 32
    statistics: bool = True


@dataclass
class ActorSettings(RouterSettings):
    """A PPO-trained actor router (TRIM-Agg, TRIM-Seq); PPO's own settings are the ``ppo`` group.

    :param observation: ``agg`` (aggregate features, MLP) or ``seq`` (step sequence, transformer).
    :param hidden: widths of the actor's (and the critic's) hidden layers.
    :param activation: ``tanh`` or ``relu``.
    :param seq: the transformer (``observation: seq`` only).
    :param total_timesteps: environment steps (routing decisions) to train for.
    :param sweep_lambdas: λ grid of the frontier study (``scripts/run_frontier.py``); for a
        λ-conditioned policy, the grid its checkpoint is chosen on and its test points are taken at.
    :param lambda_range: ``[low, high]``: train one λ-conditioned policy (Agg only) for every λ in
        the range, each episode drawing its λ log-uniformly and observing it; ``null``: one λ.
    """

    observation: str = "agg"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    seq: SeqSettings = field(default_factory=SeqSettings)
    total_timesteps: int = 150_000
    sweep_lambdas: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.004, 0.007, 0.01, 0.015, 0.02])
    lambda_range: list[float] | None = None

    def check(self) -> ActorSettings:
        """Refuse settings no network can be built from; messages name the key."""
        if self.observation not in ("agg", "seq"):
            raise ValueError(f"policy.observation = {self.observation!r} must be 'agg' or 'seq'")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"policy.activation = {self.activation!r} must be one of {sorted(ACTIVATIONS)}")
        for index, width in enumerate(self.hidden):
            if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_HIDDEN_WIDTH:
                raise ValueError(f"policy.hidden[{index}] = {width!r} must be an integer in [1, {MAX_HIDDEN_WIDTH}]")
        if self.total_timesteps < 1:
            raise ValueError(f"policy.total_timesteps = {self.total_timesteps} must be at least 1")
        if self.observation == "seq":
            for name in ("d_model", "n_layers", "n_heads", "ff_dim"):
                value = getattr(self.seq, name)
                if not 1 <= value <= MAX_HIDDEN_WIDTH:
                    raise ValueError(f"policy.seq.{name} = {value} must be an integer in [1, {MAX_HIDDEN_WIDTH}]")
            if self.seq.d_model % self.seq.n_heads:
                raise ValueError(f"policy.seq.d_model = {self.seq.d_model} must be a multiple of policy.seq.n_heads = {self.seq.n_heads}")
        conditioning = self.conditioning()
        if conditioning is not None:
            if self.observation != "agg":
                raise ValueError(f"policy.lambda_range is built for policy.observation = 'agg', not {self.observation!r}")
            for index, lam in enumerate(self.sweep_lambdas):
                conditioning.check(lam, f"policy.sweep_lambdas[{index}]")
        return self

    def conditioning(self) -> LambdaRange | None:
        """The λ range of a λ-conditioned policy (``None``: trained for one λ)."""
        if self.lambda_range is None:
            return None
        bounds = list(self.lambda_range)
        if len(bounds) != 2 or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in bounds):
            raise ValueError(f"policy.lambda_range = {self.lambda_range!r} must be two numbers [low, high]")
        try:
            return LambdaRange(float(bounds[0]), float(bounds[1]))
        except ValueError as error:
            raise ValueError(f"policy.{error}") from None

    def network(self, observation_dim: int) -> dict[str, Any]:
        """The network shape recorded in ``config.json`` (field ``network``)."""
        return {"observation_dim": observation_dim, "hidden": list(self.hidden), "activation": self.activation,
                "seq": asdict(self.seq) if self.observation == "seq" else None}


class ActorRouter(Router):
    """A learned router: argmax of an :class:`~agents.networks.ActorNetwork`'s action logits.

    :param network: the actor.
    :param observation: ``agg`` or ``seq``.
    :param config: the router's self-description (see :class:`~agents.base.Router`).
    :param sb3_model: the trained stable-baselines3 model, saved beside the actor (after training only).
    :param lambda_range: a λ-conditioned actor's range (``None``: trained for one λ, no operating point).
    :param lam: a λ-conditioned actor's operating point (in ``lambda_range``).
    """

    kind = "actor"
    Settings = ActorSettings
    supports_cost_models = True
    config_groups: ClassVar[dict[str, type]] = {"ppo": PPOSettings}

    def __init__(self, network: ActorNetwork, observation: str, config: dict[str, Any] | None = None, sb3_model: Any = None,
                 lambda_range: LambdaRange | None = None, lam: float | None = None) -> None:
        super().__init__(config)
        self.network = network.eval()
        self.observation_kind = observation  # type: ignore[misc]
        self.sb3_model = sb3_model
        self.lambda_range = lambda_range
        self.lam = None if lambda_range is None else lambda_range.check(lambda_range.low if lam is None else lam)

    @torch.no_grad()
    def predict(self, observations: np.ndarray) -> np.ndarray:
        observations = np.asarray(observations, dtype=np.float32)
        if self.lambda_range is not None:  # the policy reads its operating point as one more feature
            observations = with_lambda(observations, self.lam, self.lambda_range)  # type: ignore[arg-type]
        logits = self.network(torch.as_tensor(observations))
        return logits.argmax(-1).numpy()

    def operating_point_parameter(self) -> str | None:
        return None if self.lambda_range is None else "lambda"

    def operating_point_range(self) -> tuple[float, float] | None:
        return None if self.lambda_range is None else (self.lambda_range.low, self.lambda_range.high)

    def set_operating_point(self, value: float) -> None:
        if self.lambda_range is None:
            super().set_operating_point(value)
        self.lam = self.lambda_range.check(value)  # type: ignore[union-attr]

    @classmethod
    def fit(cls, settings: ActorSettings, data: TrainingData, ppo: PPOSettings | None = None, **groups: Any) -> Fitted:
        """Train with PPO (``ppo``: :class:`agents.ppo.PPOSettings`, default settings if ``None``) and
        keep the checkpoint with the best validation return."""
        from agents.ppo import PolicySpec, train_router  # noqa: PLC0415  (SB3 and torch training only when training)

        settings.check()
        ppo_settings = (ppo or PPOSettings()).check()
        conditioning = settings.conditioning()
        if conditioning is not None:
            conditioning.check(data.lam)
        spec = PolicySpec(settings.observation, list(settings.hidden), settings.activation,
                          asdict(settings.seq) if settings.observation == "seq" else {})
        result = train_router(data.trees, data.train_queries, data.validation, spec, ppo_settings, settings.total_timesteps,
                              data.lam, data.cost_unit_tokens, data.seed, data.progress_bar, data.log,
                              checkpoint_dir=None if data.run_dir is None else data.run_dir / CHECKPOINT_DIR,
                              resume_from=data.resume_from, run_config=data.identity(settings), tensorboard_dir=data.tensorboard_dir,
                              lambda_range=conditioning, validation_lambdas=list(settings.sweep_lambdas), cost_model=data.cost_model)
        observation_dim = result.observation_dim
        config = {**data.identity(settings), "ppo": asdict(ppo_settings), "kind": cls.kind, "observation": settings.observation,
                  "network": settings.network(observation_dim)}
        if conditioning is not None:
            config["lambda_conditioning"] = {"feature": LAMBDA_FEATURE, "low": conditioning.low, "high": conditioning.high}
        summary = {
            "validation_objective": result.best["objective"],
            "best_checkpoint_timesteps": result.best["timesteps"],
            "train_wall_time_s": result.wall_time_s,
            "env_steps": result.env_steps,
            "env_steps_per_s": result.env_steps / max(result.wall_time_s, 1e-9),
        }
        router = cls(result.actor, settings.observation, config, result.model, conditioning, data.lam if conditioning else None)
        return Fitted(router, summary, result.history, list(settings.sweep_lambdas) if conditioning else None)

    def save(self, directory: str | Path) -> Path:
        """``config.json`` and ``model.safetensors``; after training also SB3's ``sb3_model.zip``."""
        directory = write_router(directory, self.config, self.network.state_dict())
        if self.sb3_model is not None:
            self.sb3_model.save(directory / SB3_MODEL_FILE)
        return directory

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any]) -> ActorRouter:
        config_path = directory / CONFIG_FILE
        try:
            network_config = config["network"]
            network = ActorNetwork(config["observation"], network_config["observation_dim"], network_config["hidden"],
                                   network_config["activation"], network_config.get("seq"))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{config_path}: field network or observation is missing or malformed ({error!r})") from None
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.exists():
            raise FileNotFoundError(f"{weights_path}: missing; the router directory is incomplete")
        try:
            network.load_state_dict(load_file(str(weights_path)))
        except Exception as error:  # safetensors raises its own error types for truncated files
            raise ValueError(
                f"{weights_path}: unreadable or does not fit the network in {config_path} (field network = {network_config}): {error}"
            ) from error
        conditioning = config.get("lambda_conditioning")
        if conditioning is None:
            return cls(network, config["observation"], config)
        try:
            if conditioning["feature"] != LAMBDA_FEATURE:
                raise ValueError(f"feature {conditioning['feature']!r} is not this trim's {LAMBDA_FEATURE!r}")
            lambda_range = LambdaRange(float(conditioning["low"]), float(conditioning["high"]))
            return cls(network, config["observation"], config, None, lambda_range, float(config["lambda"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{config_path}: field lambda_conditioning or lambda is malformed ({error})") from None
