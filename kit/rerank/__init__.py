"""Re-rank a global shortlist with local features matched by LightGlue, then fuse with the global score.

The stage, in the order a run uses it (``rerank_fuse`` does all of it in one call)::

    index = dedup_shortlist(global_scores, gallery_labels, k, per_identity)      # kit.retrieve; [Q, K] int64
    local = rerank_shortlist(query_paths, gallery_paths, index, conf, cache_dir)  # {name: [Q, K] float32}
    cal_g = fit_calibrator(db_global, db_same, "isotonic")  # kit.calibration, on labelled DATABASE pairs, never
    cal_l = fit_calibrator(db_local, db_same, "isotonic")   # queries (kit.retrieve.calibration_shortlist draws them)
    fused = fuse(global_scores, index, local["n_matches"], cal_g, cal_l)           # [Q, N] float32

``conf`` is the ``rerank`` config section (``rerank_conf`` completes it from the defaults); ``cache_dir`` is the
cache root, ``kit.cache.cache_root(conf["cache"])`` (None = no disk cache). Fusion, not a raw re-rank: LightGlue
also matches background, so the local score is calibrated and averaged with the global one (see ``fusion``).

The modules, each importing only the ones above it:

- ``weights``: the supported extractors (``EXTRACTORS``) and where each checkpoint comes from (``resolve_weights``);
- ``settings``: ``rerank_conf``, the section completed and checked;
- ``extractors``: SuperPoint, photo decoding, local features padded to a keypoint budget and cached
  (``LocalExtractor``);
- ``lightglue``: LightGlue on padded batches of pairs (``LocalMatcher``: the extractor with its matcher);
- ``pairs``: per-pair scores over a shortlist (``local_scores``, ``rerank_shortlist``);
- ``fusion``: calibration and fusion (``fuse``, ``fit_stacker``) and the whole stage (``rerank_fuse``).
"""

from __future__ import annotations

from .extractors import FEATURES_VERSION, FeatureDict, LocalExtractor, SuperPoint
from .fusion import fit_stacker, fuse, rerank_fuse
from .lightglue import LocalMatcher
from .pairs import geometric_inliers, identity_weighted_conf, local_scores, orientation_pair_mask, rerank_shortlist
from .settings import rerank_conf
from .weights import EXTRACTORS, ExtractorSpec, WeightsRef, lightglue_wheel_dir, resolve_weights

__all__ = [
    "EXTRACTORS", "ExtractorSpec", "WeightsRef", "resolve_weights", "lightglue_wheel_dir",  # weights
    "rerank_conf",  # settings
    "FEATURES_VERSION", "FeatureDict", "LocalExtractor", "SuperPoint",  # extractors
    "LocalMatcher",  # lightglue
    "geometric_inliers", "identity_weighted_conf", "local_scores", "orientation_pair_mask", "rerank_shortlist",
    "fit_stacker", "fuse", "rerank_fuse",  # fusion
]
