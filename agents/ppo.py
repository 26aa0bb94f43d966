"""TRIM-Agg and TRIM-Seq: PPO training of the actor routers (:class:`agents.actor.ActorRouter`).

One path from settings to an exported router: build vectorised envs over the training queries,
train stable-baselines3 PPO (MLP actor-critic over the Agg features, or a transformer feature
extractor over the Seq sequence), evaluate the deterministic policy on a held-out validation part
of the training split at regular intervals, keep the best checkpoint by
``accuracy − λ · cost`` (the env's own return), and export its actor.

The loop is SB3's: the env is wrapped in ``VecMonitor`` (episode return and length in SB3's
log), :class:`TrainingSchedule` anneals the entropy bonus and warms λ up, :class:`ValidationCallback`
(an ``EvalCallback``) validates, and :class:`RolloutCheckpointCallback` (a ``CheckpointCallback``)
writes checkpoints from which :func:`train_router` (``resume_from``) continues a killed run to the
result of the uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import safe_mean, set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from agents.actor import PPOSettings
from agents.checkpoints import CHECKPOINT_PREFIX, check_same_run, state_file
from agents.extractors import SeqTransformerExtractor
from agents.networks import ActorNetwork
from trim_env import atomic
from trim_env.cost import CostModel
from trim_env.evaluation import BatchPolicy, DecisionBatch, priced, run_episodes, validation_objective
from trim_env.features import LambdaRange, with_lambda
from trim_env.tree import RolloutTrees
from trim_env.vec_env import StepRoutingVecEnv

_LOG = logging.getLogger(__name__)
#: Version of the checkpoint state file (:class:`RolloutCheckpointCallback`).
CHECKPOINT_FORMAT_VERSION = 1
#: PPO settings a resumed run may change: they do not change what is trained.
RESUMABLE_CHANGES = ("checkpoint_every",)


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


class TrainingSchedule(BaseCallback):
    """The entropy coefficient, decayed linearly over training, and the env's λ, warmed up from 0.

    Both are functions of the step count only, so a resumed run follows the same schedule. A
    λ-conditioned env draws each episode's λ itself, small ones included: no warm-up there.
    """

    def __init__(self, settings: PPOSettings, total_timesteps: int, lam: float, conditioned: bool = False) -> None:
        super().__init__()
        self.settings = settings
        self.total_timesteps = total_timesteps
        self.lam = lam
        self.conditioned = conditioned

    #: What this callback drives (SB3 types it as the base class).
    model: PPO

    def _on_step(self) -> bool:
        progress = min(1.0, self.num_timesteps / self.total_timesteps)
        self.model.ent_coef = self.settings.ent_coef_start + (self.settings.ent_coef_end - self.settings.ent_coef_start) * progress
        warmup = self.settings.lambda_warmup_fraction
        if not self.conditioned:
            routing_env(self.training_env).set_lambda(self.lam * (min(1.0, progress / warmup) if warmup > 0 else 1.0))
        return True


def routing_env(env: VecEnv) -> StepRoutingVecEnv:
    """The :class:`StepRoutingVecEnv` under SB3's wrappers (``VecMonitor``)."""
    return cast(StepRoutingVecEnv, env.unwrapped)


class ValidationCallback(EvalCallback):
    """SB3's ``EvalCallback`` over the validation queries: every ``eval_every`` steps and at the end,
    score the deterministic policy, keep the best policy by the env's return, record the history.

    ``eval_env`` plays each validation query once, in order; the episodes are run by the batch
    evaluator (:func:`trim_env.evaluation.run_episodes`) over its trees, which plays the same
    episodes as the env in array operations. ``best_mean_reward`` / ``last_mean_reward`` hold the
    validation objective (accuracy − λ · cost). :meth:`validation_record` is the one place that
    scores a policy: override it (and :meth:`decider`) to score another kind of policy.

    :param eval_env: the validation env (a :class:`StepRoutingVecEnv` over the validation trees, monitored).
    :param observation: ``agg`` or ``seq``.
    :param lam: cost weight λ of the objective.
    :param cost_unit_tokens: the env's cost unit.
    :param eval_every: evaluate at the first step at or after every this many steps (from step 0).
    :param log: called with each record (plus SB3's latest training figures) and the step count.
    :param lambda_range: a λ-conditioned policy's range: it is played at every λ of
        ``validation_lambdas`` and scored by the mean of those returns, so the kept checkpoint is the
        best for the frontier as a whole, not for one of its points.
    :param validation_lambdas: the λ grid of a conditioned policy's validation.
    :param cost_model: what a step costs (the objective's cost; default strong tokens).
    """

    def __init__(
        self,
        eval_env: VecEnv,
        observation: str,
        lam: float,
        cost_unit_tokens: float,
        eval_every: int,
        log: Callable[[dict[str, float], int], None] | None = None,
        lambda_range: LambdaRange | None = None,
        validation_lambdas: list[float] | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        super().__init__(eval_env, eval_freq=eval_every, deterministic=True, verbose=0, warn=False)
        self.cost_model = cost_model
        self.lambda_range = lambda_range
        self.validation_lambdas = list(validation_lambdas or [lam])
        self.observation = observation
        self.lam = lam
        self.cost_unit_tokens = cost_unit_tokens
        self.log = log
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {"objective": -np.inf}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.next_eval = 0
        #: Training time before this process (a resumed run), for ``env_steps_per_s``.
        self.elapsed_before_s = 0.0
        self.started = time.perf_counter()

    #: What this callback drives (SB3 types it as the base class).
    model: PPO

    def decider(self, lam: float | None = None) -> BatchPolicy:
        """The policy to score: the SB3 policy's deterministic action (a conditioned one's at ``lam``)."""
        return _PolicyDecider(self.model, self.observation, self.lambda_range, self.lam if lam is None else lam)

    def validation_record(self) -> dict[str, float]:
        """The ``validation/*`` figures of the current policy; ``validation/objective`` chooses the best.

        A conditioned policy's figures are the means over the λ grid, each λ's also under ``validation/lambda=<λ>/``.
        """
        trees = routing_env(self.eval_env).trees
        per_lambda = []
        for lam in self.validation_lambdas if self.lambda_range is not None else [self.lam]:
            outcomes = run_episodes(trees, self.decider(lam), cost_model=self.cost_model)
            per_lambda.append((lam, {
                "objective": validation_objective(outcomes.correct, outcomes.cost, lam, self.cost_unit_tokens),
                "accuracy": float(outcomes.correct.mean()),
                "strong_tokens_per_query": float(outcomes.strong_tokens.mean()),
                # Only under a priced model, so that strong-token runs record what they always did.
                **({"cost_per_query": float(outcomes.cost.mean())} if priced(self.cost_model) else {}),
                "escalations_per_query": float(outcomes.escalations.mean()),
            }))
        record = {f"validation/{key}": float(np.mean([figures[key] for _, figures in per_lambda])) for key in per_lambda[0][1]}
        if self.lambda_range is not None:
            record.update({f"validation/lambda={lam:g}/{key}": value for lam, figures in per_lambda for key, value in figures.items()})
        return record

    def elapsed_s(self) -> float:
        """Training time so far, across resumes."""
        return self.elapsed_before_s + time.perf_counter() - self.started

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            self.next_eval += self.eval_freq
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        self.evaluate()

    def evaluate(self) -> None:
        """Score the policy now: record, keep it if best, log."""
        record = {
            "timesteps": float(self.num_timesteps),
            **self.validation_record(),
            "env_steps_per_s": self.num_timesteps / max(self.elapsed_s(), 1e-9),
        }
        self.history.append(record)
        self.last_mean_reward = record["validation/objective"]
        if record["validation/objective"] > self.best["objective"]:
            self.best = {"objective": record["validation/objective"], **record}
            self.best_mean_reward = record["validation/objective"]
            self.best_state = copy.deepcopy(self.model.policy.state_dict())
        _LOG.info(
            "%d env steps: validation objective %.4f, accuracy %.4f, strong tokens/query %.1f, escalations/query %.3f (best %.4f)",
            self.num_timesteps, record["validation/objective"], record["validation/accuracy"],
            record["validation/strong_tokens_per_query"], record["validation/escalations_per_query"], self.best["objective"],
        )
        if self.log is not None:
            self.log({**record, **self.training_figures()}, self.num_timesteps)

    def training_figures(self) -> dict[str, float]:
        """SB3's latest losses (recorded by the last update) and the monitored episodes' mean return and length."""
        figures = {}
        for key in ("train/entropy_loss", "train/value_loss", "train/approx_kl"):
            value = self.model.logger.name_to_value.get(key)
            if value is not None:
                figures[key] = float(value)
        episodes = self.model.ep_info_buffer
        if episodes:
            figures["rollout/ep_rew_mean"] = float(safe_mean([episode["r"] for episode in episodes]))
            figures["rollout/ep_len_mean"] = float(safe_mean([episode["l"] for episode in episodes]))
        return figures

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the history and the best checkpoint."""
        return {"history": self.history, "best": self.best, "best_state": self.best_state, "next_eval": self.next_eval,
                "best_mean_reward": self.best_mean_reward, "last_mean_reward": self.last_mean_reward,
                "elapsed_s": self.elapsed_s()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.history, self.best, self.best_state = list(state["history"]), dict(state["best"]), state["best_state"]
        self.next_eval = int(state["next_eval"])
        self.best_mean_reward, self.last_mean_reward = float(state["best_mean_reward"]), float(state["last_mean_reward"])
        self.elapsed_before_s, self.started = float(state["elapsed_s"]), time.perf_counter()


class RolloutCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback``, saving at rollout boundaries only, with the state SB3 does not save.

    A checkpoint is taken when a rollout starts (after the previous update) at the first boundary
    at or after every ``checkpoint_every`` steps, never mid-rollout, so that a resumed run starts
    a rollout exactly where the killed one did: the model zip (``model.save``: weights, optimizer,
    step count, last observations, episode buffer, entropy coefficient) and a state file with the
    torch / numpy / Python random states, the envs' episodes (:meth:`StepRoutingVecEnv.get_state`),
    the monitor's running episodes, the validation callback's state and ``run_config``. The trees'
    growth is flushed first (the growth up to a checkpoint is on disk with it).

    :param checkpoint_every: steps between checkpoints.
    :param directory: where to write them (:data:`agents.checkpoints.CHECKPOINT_DIR` of the run).
    :param validation: the run's validation callback (its state is saved too).
    :param run_config: what a resume must match (:func:`agents.checkpoints.check_same_run`).
    :param trees: stores to flush before saving.
    """

    def __init__(
        self, checkpoint_every: int, directory: Path, validation: ValidationCallback, run_config: dict[str, Any], trees: list[RolloutTrees]
    ) -> None:
        super().__init__(checkpoint_every, str(directory), name_prefix=CHECKPOINT_PREFIX)
        self.validation = validation
        self.run_config = run_config
        self.trees = trees
        self.next_checkpoint = checkpoint_every

    def _init_callback(self) -> None:
        """Nothing to prepare: :meth:`save` creates the directory (a short run writes none)."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_checkpoint:
            self.next_checkpoint = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            self.save()

    def save(self) -> Path:
        """Write a checkpoint at the current step; returns the model zip."""
        for trees in self.trees:
            trees.flush()
        monitor = cast(VecMonitor, self.training_env)
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "run_config": self.run_config,
            "num_timesteps": self.num_timesteps,
            "random": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "env": routing_env(monitor).get_state(),
            "monitor": {"episode_returns": monitor.episode_returns, "episode_lengths": monitor.episode_lengths,
                        "episode_count": monitor.episode_count},
            "validation": self.validation.state_dict(),
            "next_checkpoint": self.next_checkpoint,
        }
        path = Path(self._checkpoint_path(extension="zip"))
        atomic.write_atomic(state_file(path), lambda scratch: torch.save(state, scratch))
        atomic.write_atomic(path, lambda scratch: self.model.save(scratch))
        _LOG.info("%d env steps: checkpoint %s", self.num_timesteps, path)
        return path


def load_checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """The state file of ``checkpoint`` (a model zip); it holds pickled random states, so only resume trusted runs."""
    path = state_file(checkpoint)
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:  # torch raises pickle, zip and runtime errors for damaged files
        raise ValueError(f"resume: {path} is unreadable ({error})") from error
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"resume: {path} is not a checkpoint state of format version {CHECKPOINT_FORMAT_VERSION}")
    return state


def make_vec_env(
    trees: RolloutTrees, queries: np.ndarray, observation: str, lam: float, cost_unit_tokens: float, seed: int, settings: PPOSettings,
    lambda_range: LambdaRange | None = None, cost_model: CostModel | None = None,
) -> VecEnv:
    """The batched env: ``n_envs`` episodes over ``queries``, env ``i`` shuffling them with seed ``seed + i``."""
    return StepRoutingVecEnv(trees, settings.n_envs, observation, lam, cost_unit_tokens, seed=seed, queries=queries,
                             lambda_range=lambda_range, cost_model=cost_model)


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
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    run_config: dict[str, Any] | None = None,
    tensorboard_dir: Path | None = None,
    lambda_range: LambdaRange | None = None,
    validation_lambdas: list[float] | None = None,
    cost_model: CostModel | None = None,
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
    :param checkpoint_dir: where to write a checkpoint every ``settings.checkpoint_every`` steps
        (``None``: no checkpoints).
    :param resume_from: a checkpoint (model zip, :mod:`agents.checkpoints`) to continue from; the
        result is the one the uninterrupted run would have given.
    :param run_config: what identifies this run (settings, data, λ, seed), recorded in checkpoints;
        resuming a checkpoint of another config is refused, naming the differing key.
    :param tensorboard_dir: also write SB3's own log (``train/*``, ``rollout/*``, ``time/fps``) as TensorBoard events here.
    :param lambda_range: train one λ-conditioned policy over this range (``lam`` is then only its default).
    :param validation_lambdas: a conditioned policy's checkpoint is chosen by its mean validation return over these λ.
    :param cost_model: what a step costs in the reward and the validation objective (default strong tokens).
    """
    run_config = {**(run_config or {}), "seed": seed, "total_timesteps": total_timesteps, "train_queries": np.asarray(train_queries).tolist(),
                  "ppo": asdict(settings)}
    state = load_checkpoint_state(resume_from) if resume_from is not None else None
    if state is not None and resume_from is not None:
        check_same_run(state["run_config"], run_config, resume_from, ignore=tuple(f"ppo.{key}" for key in RESUMABLE_CHANGES))
    set_random_seed(seed)
    torch.set_num_threads(settings.torch_threads)
    env = VecMonitor(make_vec_env(trees, train_queries, spec.observation, lam, cost_unit_tokens, seed, settings, lambda_range, cost_model))
    if resume_from is None:
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
    else:
        # Keep the saved last observations: the env continues its episodes instead of resetting.
        model = PPO.load(resume_from, env=env, device=settings.device, force_reset=False)
    if tensorboard_dir is not None:
        model.set_logger(configure(str(tensorboard_dir), ["tensorboard"]))
    validation_env = VecMonitor(StepRoutingVecEnv(validation, 1, spec.observation, lam, cost_unit_tokens, seed=None, shuffle=False,
                                                  cost_model=cost_model))
    evaluation = ValidationCallback(validation_env, spec.observation, lam, cost_unit_tokens, settings.eval_every, log,
                                    lambda_range, validation_lambdas, cost_model)
    callbacks: list[BaseCallback] = [TrainingSchedule(settings, total_timesteps, lam, lambda_range is not None), evaluation]
    checkpoints = None
    if checkpoint_dir is not None and settings.checkpoint_every > 0:
        checkpoints = RolloutCheckpointCallback(settings.checkpoint_every, checkpoint_dir, evaluation, run_config, [trees, validation])
        callbacks.append(checkpoints)
    if state is not None:
        _restore(state, env, evaluation, checkpoints)
    started = time.perf_counter()
    model.learn(total_timesteps=total_timesteps - model.num_timesteps, callback=CallbackList(callbacks), progress_bar=progress_bar,
                reset_num_timesteps=state is None)
    wall_time = time.perf_counter() - started + (state["validation"]["elapsed_s"] if state is not None else 0.0)
    env.close()
    if evaluation.best_state is not None:
        model.policy.load_state_dict(evaluation.best_state)
    observation_dim = int(np.prod(cast(tuple[int, ...], env.observation_space.shape)))
    return TrainResult(
        model=model,
        actor=extract_actor(model, spec, observation_dim),
        history=evaluation.history,
        best=evaluation.best,
        wall_time_s=wall_time,
        env_steps=int(model.num_timesteps),
        observation_dim=observation_dim,
    )


def _restore(state: dict[str, Any], env: VecMonitor, evaluation: ValidationCallback, checkpoints: RolloutCheckpointCallback | None) -> None:
    """Put the envs, the callbacks and the random generators where the checkpoint left them.

    The random states come last: ``PPO.load`` has re-seeded everything with the run's seed.
    """
    routing_env(env).set_state(state["env"])
    monitor = state["monitor"]
    env.episode_returns, env.episode_lengths = monitor["episode_returns"].copy(), monitor["episode_lengths"].copy()
    env.episode_count = int(monitor["episode_count"])
    evaluation.load_state_dict(state["validation"])
    if checkpoints is not None:
        checkpoints.next_checkpoint = max(int(state["next_checkpoint"]), state["num_timesteps"] + 1)
    torch.set_rng_state(state["random"]["torch"])
    np.random.set_state(state["random"]["numpy"])
    random.setstate(state["random"]["python"])
