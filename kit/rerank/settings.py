"""The ``rerank`` config section, completed from kit.config's DEFAULTS (where every setting is commented)."""

from __future__ import annotations

from ..config import DEFAULTS
from ..errors import ConfigError
from .weights import EXTRACTORS


def rerank_conf(conf: dict | None) -> dict:
    """The ``rerank`` section completed from DEFAULTS; unknown keys raise (a typo must not be silently ignored)."""
    base = DEFAULTS["rerank"]
    unknown = sorted(set(conf or {}) - set(base))
    if unknown:
        raise ConfigError(f"unknown rerank setting(s) {', '.join(unknown)}; known: {', '.join(sorted(base))}")
    out = {**base, **(conf or {})}
    names = [out["extractor"]] if isinstance(out["extractor"], str) else list(out["extractor"])
    bad = [n for n in names if n not in (*EXTRACTORS, "sift", "auto")]
    if bad:
        raise ConfigError(f"rerank.extractor={out['extractor']!r}: {', '.join(map(repr, bad))} is not one of "
                          f"auto, sift, {', '.join(EXTRACTORS)}")
    return out
