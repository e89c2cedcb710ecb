"""AnimalCLEF 2026: cluster the test images of each dataset into individuals.

The stage, per dataset, in the order a run uses it (``cluster_competition`` does all of it; ``cc`` is the
``cluster`` config section)::

    folds = heldout_folds(train, emb_train, cc)             # pseudo-test sets cut from TRAIN identities
    model = fit_cluster_model(folds, cc, prior)             # train linker, pair model, method + cut (held-out ARI)
    labels, prob = predict_clusters(model, emb_test, orientation, emb_train=..., train_labels=...)
        # inside: pair_features -> {name: [M, M]}, model.pair_model.predict -> [M, M] P(same individual),
        #         cluster_matrix(prob, method, cut, edge_cut) -> [M] int64

- ``linkage.py``: clustering a [M, M] probability matrix (average / complete / single linkage, components) and a
  fast ARI for scanning cuts;
- ``features.py``: pair features (cosine, neighbourhood, train links, flanks, local matches) and the pair model;
- ``select.py``: held-out folds of the train identities, the choice of method and cut, the no-train fallback;
- ``constraints.py``: human must-/cannot-links (``kit submit --decisions``) honoured by the clustering.

Measured on nyala (bench/cluster.py, 575 test photos of 178 individuals, tf_efficientnet_lite0 embeddings): ARI
0.047, against 0.028 for average linkage on cosine and 0.012 for connected components on cosine, both at their best
threshold in hindsight. Clustering 10k photos from their [M, M] scores takes 2 to 6 s on 2 CPU cores.
"""

from .constraints import LinkError, check_links, cluster_with_links, index_links, link_groups
from .features import LocalFn, PairModel, TrainLinker, fit_linker, fit_pair_model, neighbour_features, pair_features
from .linkage import CUT_GRID, LINKAGES, ari, ari_curve, cluster_matrix, cut_tree, linkage_tree, naive_baselines
from .select import (METHODS, ClusterModel, choose_cut, cluster_competition, fit_cluster_model, fit_fallback_model,
                     heldout_folds, method_curves, pooled_curves, predict_clusters)

__all__ = ["CUT_GRID", "LINKAGES", "METHODS", "ClusterModel", "LinkError", "LocalFn", "PairModel", "TrainLinker", "ari",
           "ari_curve", "check_links", "choose_cut", "cluster_competition", "cluster_matrix", "cluster_with_links",
           "cut_tree", "fit_cluster_model", "index_links", "link_groups",
           "fit_fallback_model", "fit_linker", "fit_pair_model", "heldout_folds", "linkage_tree", "method_curves",
           "naive_baselines", "neighbour_features", "pair_features", "pooled_curves", "predict_clusters"]
