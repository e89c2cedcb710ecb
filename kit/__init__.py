"""kit: a competition kit for animal re-identification (AnimalCLEF 2025 and 2026).

The pipeline is a chain of stages, one module each, that meet at numpy arrays and pandas DataFrames:
data -> embed (+cache) -> retrieve -> rerank -> openset / cluster -> submit, scored by metrics.
"""

__version__ = "0.1.0"
