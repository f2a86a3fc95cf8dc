"""midalign: layer-wise cross-lingual retrieval probes and middle-layer alignment for LLMs."""

__version__ = "0.1.0"
