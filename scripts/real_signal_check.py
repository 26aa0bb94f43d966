"""Real-signal check: how well each query-level router's signal predicts the weak model's success, real vs simulated.

For every real MATH-500 trajectory file in ``<shared>/data/real_trajectories`` (graded with
math-verify where the file has no correctness field) this reports the AUROC, for a correct weak
answer, of the weak solution's minimum and last PRM step score (AutoMix-PRM), of the MATH level
(lower = easier) and of a text classifier (logistic regression on all-MiniLM-L6-v2 embeddings of
the problem, cross-validated with folds grouped by problem, penalty chosen inside each training
fold). Beside them: the same figures on the simulated default test split, where the classifier
reads the simulator's query features and level and trains on the train split. The Llama pair is
not ordered by strength, so this reports signal quality, not PGR.

Usage (a Hydra app: ``conf/real_signal_check.yaml``)::

    python scripts/real_signal_check.py [shared=../shared] [out=outputs/real_signal] [folds=5] [seed=0]
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from agents.baselines.query_level import LogisticClassifier, query_features, select_and_fit, weak_solution_scores
from agents.baselines.query_routers import ClassifierSettings
from agents.baselines.real_trajectories import RealSolutions, load_real_solutions, math500_levels
from agents.baselines.text_features import embed_texts
from agents.cli.strict import check_boolean_overrides, refuse_to_overwrite
from trim_env.data import load_trees
from trim_env.metrics import auroc
from trim_env.paths import checkout_root, config_dir

#: L2 strengths tried for the text classifier (384 inputs, a few hundred training problems).
TEXT_PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0)
#: L2 strengths tried for the simulator-feature classifier: the classifier baseline's (policy=classifier).
FEATURE_PENALTIES = tuple(ClassifierSettings().penalties)
ROWS = ("n solutions", "weak accuracy", "min PRM score", "last PRM score", "MATH level", "classifier")


def cross_validated_confidence(
    embeddings: np.ndarray, labels: np.ndarray, groups: list[str], folds: int, seed: int
) -> np.ndarray:
    """Out-of-fold P(correct) of the text classifier; all solutions of one problem share a fold.

    :param embeddings: one row per solution.
    :param labels: 1 where the solution is correct.
    :param groups: the problem of each solution.
    :param folds: number of folds (>= 2).
    :param seed: seed of the fold assignment and of the inner validation split.
    """
    problems = sorted(set(groups))
    fold_of_problem = dict(zip(problems, np.random.default_rng(seed).permutation(len(problems)) % folds))
    fold = np.array([fold_of_problem[g] for g in groups])
    confidence = np.empty(len(labels))
    settings = [{"penalty": p} for p in TEXT_PENALTIES]
    for k in range(folds):
        held_out = fold == k
        selection = select_and_fit(LogisticClassifier.fit, settings, embeddings[~held_out], labels[~held_out], seed=seed)
        confidence[held_out] = selection.model.confidence(embeddings[held_out])
    return confidence


def real_column(solutions: RealSolutions, embeddings: dict[str, np.ndarray], folds: int, seed: int) -> dict[str, float]:
    """Signal AUROCs for one real file."""
    known_level = solutions.level > 0
    matrix = np.stack([embeddings[p] for p in solutions.problem])
    confidence = cross_validated_confidence(matrix, solutions.correct, solutions.problem, folds, seed)
    return {
        "n solutions": len(solutions.correct),
        "weak accuracy": solutions.accuracy,
        "min PRM score": auroc(solutions.min_score, solutions.correct),
        "last PRM score": auroc(solutions.last_score, solutions.correct),
        "MATH level": auroc(-solutions.level[known_level], solutions.correct[known_level]) if known_level.any() else float("nan"),
        "classifier": auroc(confidence, solutions.correct),
    }


def simulator_column(seed: int) -> dict[str, float]:
    """The same signals on the simulated default data (test split; the classifier trains on train)."""
    train, test = load_trees(split="train"), load_trees(split="test")
    scores = weak_solution_scores(test)
    settings = [{"penalty": p} for p in FEATURE_PENALTIES]
    classifier = select_and_fit(LogisticClassifier.fit, settings, query_features(train), train.weak_only_correct, seed=seed)
    return {
        "n solutions": test.num_queries,
        "weak accuracy": float(np.mean(test.weak_only_correct)),
        "min PRM score": auroc(scores["min"], test.weak_only_correct),
        "last PRM score": auroc(scores["last"], test.weak_only_correct),
        "MATH level": auroc(-test.level, test.weak_only_correct),
        "classifier": auroc(classifier.model.confidence(query_features(test)), test.weak_only_correct),
    }


def markdown(columns: dict[str, dict[str, float]], folds: int) -> str:
    """The signal table: one row per signal, one column per real file and one for the simulator."""
    names = list(columns)
    lines = [
        (
            "AUROC of each signal for a correct weak answer (real: MATH-500; simulator: default test split). "
            f"Classifier: text embeddings on real data ({folds}-fold CV grouped by problem), query features + level "
            "in the simulator."
        ),
        "",
        "| signal | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for row in ROWS:
        cells = [f"{columns[name][row]:.0f}" if row == "n solutions" else f"{columns[name][row]:.3f}" for name in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shared_dir(setting: str | None) -> Path:
    """The shared/ folder: as given, else ``shared/`` beside the checkout."""
    if setting is not None:
        return Path(setting)
    root = checkout_root()
    if root is None:
        raise SystemExit("error: no checkout to find ../shared next to; give shared=DIR")
    return root.parent / "shared"


@hydra.main(config_path=str(config_dir()), config_name="real_signal_check", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    folds, seed = int(cfg.folds), int(cfg.seed)
    refuse_to_overwrite(cfg.out, ("real_signal.md", "real_signal.json"), bool(cfg.overwrite))
    shared = shared_dir(cfg.shared) / "data"
    files = sorted((shared / "real_trajectories").glob("*.jsonl"))
    if not files:
        raise SystemExit(f"error: no *.jsonl under {shared / 'real_trajectories'}; give shared=DIR")
    levels = math500_levels(shared / "problems" / "math500" / "test.jsonl")
    solutions = [load_real_solutions(path, levels) for path in files]
    problems = sorted({p for s in solutions for p in s.problem})
    embeddings = dict(zip(problems, embed_texts(problems)))  # every file shares the same 500 problems
    columns = {s.name.split("_")[0]: real_column(s, embeddings, folds, seed) for s in solutions}
    columns["simulator"] = simulator_column(seed)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = markdown(columns, folds)
    (out / "real_signal.md").write_text(report + "\n")
    (out / "real_signal.json").write_text(json.dumps({"files": [str(f) for f in files], "columns": columns}, indent=2) + "\n")
    print(report)
    print(f"\nwrote {out / 'real_signal.md'}, {out / 'real_signal.json'}")


if __name__ == "__main__":
    main()
