"""Local matching: features per photo, scores per photo pair, for the pair model (kit.pairmodel) to fuse.

The stage, in the order a run uses it (kit/pipeline/local.py wires it)::

    scorer = make_scorer("sift", rerank_conf(section))      # RootSIFT + mutual NN / ratio; or ALIKED, DISK + LightGlue
    scores = score_pairs(scorer, paths_a, paths_b, pairs, cache_dir)  # {n_matches, n_strict, sum_conf[, inliers]}

``section`` is the ``rerank`` config section; ``cache_dir`` the cache root, ``kit.cache.cache_root(conf["cache"])``
(None = no disk cache). Each unordered photo pair is matched once per cache (both directions are stored), so the
open-set calibration's database x database pairs cost nothing more.

The modules, each importing only the ones above it:

- ``weights``: the supported network extractors (``EXTRACTORS``) and where each checkpoint comes from;
- ``settings``: ``rerank_conf``, the section completed and checked;
- ``extractors``: SuperPoint, photo decoding, network features padded to a keypoint budget and cached;
- ``sift``: RootSIFT features (OpenCV), in the same padded, cached layout;
- ``mnn``: mutual nearest neighbours + ratio test, one photo against many per matmul (RootSIFT's matcher);
- ``lightglue``: LightGlue on padded batches of pairs (``LocalMatcher``: a network extractor with its matcher);
- ``pairs``: the cached pair scoring (``score_pairs``), RANSAC inliers, flank masks;
- ``scorers``: one interface over both matchers (``make_scorer``): columns, both directions, correspondences.
"""

from .extractors import FEATURES_VERSION, FeatureDict, LocalExtractor, SuperPoint
from .lightglue import LocalMatcher
from .mnn import mnn_reference, mnn_scores
from .pairs import geometric_inliers, identity_weighted, orientation_pair_mask, score_pairs
from .scorers import LightGlueScorer, PairScorer, SiftScorer, make_scorer
from .settings import rerank_conf
from .sift import SiftExtractor
from .weights import EXTRACTORS, ExtractorSpec, WeightsRef, lightglue_wheel_dir, resolve_weights

__all__ = [
    "EXTRACTORS", "ExtractorSpec", "WeightsRef", "resolve_weights", "lightglue_wheel_dir",  # weights
    "rerank_conf",  # settings
    "FEATURES_VERSION", "FeatureDict", "LocalExtractor", "SuperPoint",  # extractors
    "SiftExtractor", "mnn_reference", "mnn_scores",  # RootSIFT
    "LocalMatcher",  # lightglue
    "geometric_inliers", "identity_weighted", "orientation_pair_mask", "score_pairs",  # pairs
    "LightGlueScorer", "PairScorer", "SiftScorer", "make_scorer",  # scorers
]
