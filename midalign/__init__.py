"""midalign's Python API: layer-wise retrieval probes and middle-layer alignment for LLMs.

For a model already in a notebook (docs/api.md, "Python API"):

- :func:`load_model`: any HF causal LM and its tokenizer (hub id, folder, GGUF file or
  ``"default"``), optionally with a PEFT adapter on it;
- :func:`probe_model`: xsim retrieval of every language pair at every layer (a :class:`Probe`);
- :class:`AlignmentTrainer` with :class:`AlignConfig`: the alignment loss in your own
  ``Trainer`` training, built as ``Trainer`` is;
- :func:`merge_adapters`: the exact weighted merge of LoRA adapters.

Each is imported on first use, so ``import midalign`` does not load torch or transformers.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: importing typing would double this module's import time
if TYPE_CHECKING:
    from typing import Any

    from midalign.modeling.loading import load_model
    from midalign.probe.embeddings import Probe, probe_model
    from midalign.training.config import AlignConfig
    from midalign.training.merge import merge_adapters
    from midalign.training.trainer import AlignmentTrainer

__version__ = "0.1.0"

_API = {
    "load_model": "midalign.modeling.loading",
    "probe_model": "midalign.probe.embeddings",
    "Probe": "midalign.probe.embeddings",
    "AlignConfig": "midalign.training.config",
    "AlignmentTrainer": "midalign.training.trainer",
    "merge_adapters": "midalign.training.merge",
}
__all__ = [
    "AlignConfig",
    "AlignmentTrainer",
    "Probe",
    "load_model",
    "merge_adapters",
    "probe_model",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from their modules when first asked for."""
    if name not in _API:
        raise AttributeError(f"module 'midalign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
