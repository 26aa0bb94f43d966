"""TRIM-Agg and TRIM-Seq: PPO training of the actor routers (:class:`agents.actor.ActorRouter`).

One path from settings to an exported router: build vectorised envs over the training queries,
train stable-baselines3 PPO (MLP actor-critic over the Agg features, or a transformer feature
extractor over the Seq sequence), evaluate the deterministic policy on a held-out validation part
of the training split at regular intervals, keep the best checkpoint by
``accuracy − λ · cost`` (the env's own return), and export its actor.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv

from agents.actor import PPOSettings
from agents.extractors import SeqTransformerExtractor
from agents.networks import ActorNetwork
from trim_env.evaluation import DecisionBatch, run_episodes, validation_objective
from trim_env.features import LambdaRange, with_lambda
from trim_env.tree import RolloutTrees
from trim_env.vec_env import StepRoutingVecEnv


@dataclass
class PolicySpec:
    """Network shape of a learned router."""

    observation: str = "agg"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    #: SeqEncoder settings (``observation == "seq"`` only).
    seq: dict[str, int] = field(default_factory=dict)

    def policy_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "net_arch": {"pi": list(self.hidden), "vf": list(self.hidden)},
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[self.activation],
        }
        if self.observation == "seq":
            kwargs["features_extractor_class"] = SeqTransformerExtractor
            kwargs["features_extractor_kwargs"] = dict(self.seq)
        return kwargs


@dataclass
class TrainResult:
    """A trained router and what happened during training."""

    model: PPO
    actor: ActorNetwork
    history: list[dict[str, float]]
    best: dict[str, float]
    wall_time_s: float
    env_steps: int
    #: Length of the flattened observation the actor reads.
    observation_dim: int


def extract_actor(model: PPO, spec: PolicySpec, observation_dim: int) -> ActorNetwork:
    """Copy the SB3 policy's actor path (extractor, policy MLP, action head) into a plain network."""
    actor = ActorNetwork(spec.observation, observation_dim, list(spec.hidden), spec.activation, spec.seq or None)
    policy = model.policy
    if spec.observation == "seq":
        extractor = cast(SeqTransformerExtractor, policy.pi_features_extractor)
        actor.encoder.load_state_dict(extractor.encoder.state_dict())
    actor.policy_net.load_state_dict(policy.mlp_extractor.policy_net.state_dict())
    actor.action_net.load_state_dict(policy.action_net.state_dict())
    return actor.eval()


class _PolicyDecider:
    """The SB3 policy's deterministic action, for the batch evaluator (a λ-conditioned one at ``lam``)."""

    def __init__(self, model: PPO, observation: str, lambda_range: LambdaRange | None = None, lam: float = 0.0) -> None:
        self.model = model
        self.observation = observation
        self.lambda_range = lambda_range
        self.lam = lam

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        observations = batch.agg() if self.observation == "agg" else batch.seq()
        if self.lambda_range is not None:
            observations = with_lambda(observations, self.lam, self.lambda_range)
        actions, _ = self.model.policy.predict(observations, deterministic=True)
        return actions


def validation_record(model: PPO, validation: RolloutTrees, observation: str, lam: float, cost_unit_tokens: float,
                      lambda_range: LambdaRange | None = None, validation_lambdas: list[float] | None = None) -> dict[str, float]:
    """The deterministic policy's figures on the validation queries; ``validation/objective`` ranks checkpoints.

    A policy for one λ is scored by the env's return there, accuracy − λ · cost. A λ-conditioned
    policy is played at every λ of ``validation_lambdas`` and scored by the mean of those returns,
    so the kept checkpoint is the best one for the frontier as a whole, not for one of its points.
    """
    if lambda_range is None:
        outcomes = run_episodes(validation, _PolicyDecider(model, observation))
        return {
            "validation/objective": validation_objective(outcomes.correct, outcomes.strong_tokens, lam, cost_unit_tokens),
            "validation/accuracy": float(outcomes.correct.mean()),
            "validation/strong_tokens_per_query": float(outcomes.strong_tokens.mean()),
            "validation/escalations_per_query": float(outcomes.escalations.mean()),
        }
    record: dict[str, float] = {}
    objectives = []
    for grid_lam in validation_lambdas or [lam]:
        outcomes = run_episodes(validation, _PolicyDecider(model, observation, lambda_range, grid_lam))
        objectives.append(validation_objective(outcomes.correct, outcomes.strong_tokens, grid_lam, cost_unit_tokens))
        record[f"validation/lambda={grid_lam:g}/objective"] = objectives[-1]
        record[f"validation/lambda={grid_lam:g}/accuracy"] = float(outcomes.correct.mean())
        record[f"validation/lambda={grid_lam:g}/strong_tokens_per_query"] = float(outcomes.strong_tokens.mean())
    return {"validation/objective": float(np.mean(objectives)), **record}


class _TrainingCallback(BaseCallback):
    """Entropy schedule, periodic validation with best-checkpoint keeping, and metric hooks."""

    def __init__(
        self,
        settings: PPOSettings,
        total_timesteps: int,
        validation: RolloutTrees,
        observation: str,
        lam: float,
        cost_unit_tokens: float,
        log: Callable[[dict[str, float], int], None] | None,
        lambda_range: LambdaRange | None = None,
        validation_lambdas: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.lambda_range = lambda_range
        self.validation_lambdas = validation_lambdas
        self.settings = settings
        self.total_timesteps = total_timesteps
        self.validation = validation
        self.observation = observation
        self.lam = lam
        self.cost_unit_tokens = cost_unit_tokens
        self.log = log
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {"objective": -np.inf}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.next_eval = 0
        self.started = time.perf_counter()

    #: What this callback drives (SB3 types them as the base classes).
    model: PPO
    training_env: StepRoutingVecEnv

    def _on_step(self) -> bool:
        progress = min(1.0, self.num_timesteps / self.total_timesteps)
        self.model.ent_coef = self.settings.ent_coef_start + (self.settings.ent_coef_end - self.settings.ent_coef_start) * progress
        warmup = self.settings.lambda_warmup_fraction
        if self.lambda_range is None:  # a conditioned env draws λ per episode, small ones included
            self.training_env.set_lambda(self.lam * (min(1.0, progress / warmup) if warmup > 0 else 1.0))
        if self.num_timesteps >= self.next_eval:
            self.next_eval += self.settings.eval_every
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        self.evaluate()

    def evaluate(self) -> None:
        record = {
            "timesteps": float(self.num_timesteps),
            **validation_record(self.model, self.validation, self.observation, self.lam, self.cost_unit_tokens,
                                self.lambda_range, self.validation_lambdas),
            "env_steps_per_s": self.num_timesteps / max(time.perf_counter() - self.started, 1e-9),
        }
        self.history.append(record)
        if record["validation/objective"] > self.best["objective"]:
            self.best = {"objective": record["validation/objective"], **record}
            self.best_state = copy.deepcopy(self.model.policy.state_dict())
        if self.log is not None:
            logged = dict(record)
            for key in ("train/entropy_loss", "train/value_loss", "train/approx_kl", "rollout/ep_rew_mean"):
                value = self.model.logger.name_to_value.get(key)
                if value is not None:
                    logged[key] = float(value)
            self.log(logged, self.num_timesteps)


def make_vec_env(
    trees: RolloutTrees, queries: np.ndarray, observation: str, lam: float, cost_unit_tokens: float, seed: int, settings: PPOSettings,
    lambda_range: LambdaRange | None = None,
) -> VecEnv:
    """The batched env: ``n_envs`` episodes over ``queries``, env ``i`` shuffling them with seed ``seed + i``."""
    return StepRoutingVecEnv(trees, settings.n_envs, observation, lam, cost_unit_tokens, seed=seed, queries=queries,
                             lambda_range=lambda_range)


def train_router(
    trees: RolloutTrees,
    train_queries: np.ndarray,
    validation: RolloutTrees,
    spec: PolicySpec,
    settings: PPOSettings,
    total_timesteps: int,
    lam: float,
    cost_unit_tokens: float,
    seed: int,
    progress_bar: bool = True,
    log: Callable[[dict[str, float], int], None] | None = None,
    lambda_range: LambdaRange | None = None,
    validation_lambdas: list[float] | None = None,
) -> TrainResult:
    """Train a PPO router on ``train_queries`` of ``trees`` and return its best checkpoint.

    :param trees: the training split.
    :param train_queries: query indices of ``trees`` to train on (the rest is validation).
    :param validation: the validation queries as their own trees (for the batch evaluator).
    :param spec: network shape and observation kind.
    :param settings: PPO settings.
    :param total_timesteps: environment steps (routing decisions) to train for.
    :param lam: cost weight λ (per ``cost_unit_tokens`` strong tokens).
    :param cost_unit_tokens: the env's cost unit.
    :param seed: seeds torch, numpy, PPO and the envs.
    :param progress_bar: show a progress bar.
    :param log: called with a dict of metrics and the step count at every validation.
    :param lambda_range: train one λ-conditioned policy over this range (``lam`` is then only its default).
    :param validation_lambdas: a conditioned policy's checkpoint is chosen by its mean validation return over these λ.
    """
    set_random_seed(seed)
    torch.set_num_threads(settings.torch_threads)
    env = make_vec_env(trees, train_queries, spec.observation, lam, cost_unit_tokens, seed, settings, lambda_range)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=settings.learning_rate,
        n_steps=settings.n_steps,
        batch_size=settings.batch_size,
        n_epochs=settings.n_epochs,
        gamma=settings.gamma,
        gae_lambda=settings.gae_lambda,
        clip_range=settings.clip_range,
        ent_coef=settings.ent_coef_start,
        vf_coef=settings.vf_coef,
        max_grad_norm=settings.max_grad_norm,
        policy_kwargs=spec.policy_kwargs(),
        seed=seed,
        device=settings.device,
        verbose=0,
    )
    callback = _TrainingCallback(settings, total_timesteps, validation, spec.observation, lam, cost_unit_tokens, log,
                                 lambda_range, validation_lambdas)
    started = time.perf_counter()
    model.learn(total_timesteps=total_timesteps, callback=CallbackList([callback]), progress_bar=progress_bar)
    wall_time = time.perf_counter() - started
    env.close()
    if callback.best_state is not None:
        model.policy.load_state_dict(callback.best_state)
    observation_dim = int(np.prod(cast(tuple[int, ...], env.observation_space.shape)))
    return TrainResult(
        model=model,
        actor=extract_actor(model, spec, observation_dim),
        history=callback.history,
        best=callback.best,
        wall_time_s=wall_time,
        env_steps=int(model.num_timesteps),
        observation_dim=observation_dim,
    )

