"""LightGlue on many pairs at once, with the weights trained for the extractor's descriptors.

kornia's LightGlue forward batches only pairs of equal keypoint counts, so ``_lightglue_batched`` drives kornia's
own submodules with padding masks (proved equal to kornia's single-pair forward, ``LocalMatcher.match_single``, in
tests/test_rerank.py). Matching is non-adaptive (no early stop, no point pruning): adaptive depth and width make
each pair's result depend on the rest of its batch. The transformer layers run at the autocast dtype of
``kit.device.policy`` (bf16 on Ampere and newer, fp16 on older GPUs, fp32 on the CPU); the assignment at fp32.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .extractors import FeatureDict, LocalExtractor
from .weights import _load_checked, _torch_load, resolve_weights


class LocalMatcher(LocalExtractor):
    """A local-feature extractor with its LightGlue matcher, built from the ``rerank`` config section.

    Extraction (``extract``, ``extract_image``, ``cache_spec``) is LocalExtractor's; this class adds the
    matcher. The extractor's weights resolve when the object is built (the file's hash keys the feature cache),
    LightGlue's on the first match; the networks load on first use, so a run whose features are all cached never
    loads the extractor.
    """

    def __init__(self, conf: dict | None = None):
        super().__init__(conf)
        self._lightglue: nn.Module | None = None

    @property
    def lightglue(self) -> nn.Module:
        if self._lightglue is None:
            import kornia.feature as KF

            path = resolve_weights(self.spec.matcher, self.conf["matcher_weights"], self.conf["allow_download"])
            state = _torch_load(path)
            state = {k.removeprefix("matcher."): v for k, v in state.items()}
            for i in range(9):  # checkpoints before kornia's port name the layers self_attn.i / cross_attn.i
                state = {k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
                          .replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn."): v for k, v in state.items()}
            # features=None: kornia builds the net without downloading; -1 turns off early stopping and pruning
            model = KF.LightGlue(None, input_dim=self.spec.dim, depth_confidence=-1, width_confidence=-1,
                                 filter_threshold=float(self.conf["match_threshold"]))
            self._lightglue = _load_checked(model, path, state, self.spec.matcher.what,
                                            derived=["confidence_thresholds"]).to(self.device)
        return self._lightglue

    def _batch_size(self) -> int:
        bs = self.conf["batch_size"]
        # CPU attention is compute-bound, so big batches only cost memory there (bench/rerank.py)
        return (128 if self.device.type == "cuda" else 16) if bs == "auto" else int(bs)

    @torch.inference_mode()
    def match_pairs(self, feats0: FeatureDict, feats1: FeatureDict, pairs: np.ndarray,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Batched LightGlue on ``pairs: [P, 2] int64`` (row of feats0, row of feats1).

        Returns ``matches: [P, B0] int32`` (the feats1 keypoint matched to each feats0 keypoint, -1 = none) and
        ``confidence: [P, B0] float32`` (0 where unmatched), B0 = feats0's budget. A match is mutual and has
        confidence above rerank.match_threshold.
        """
        from ..progress import progress_bar

        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        b0 = feats0["keypoints"].shape[1]
        matches = np.full((len(pairs), b0), -1, np.int32)
        confidence = np.zeros((len(pairs), b0), np.float32)
        if len(pairs) == 0:
            return matches, confidence
        lg, dev = self.lightglue, self.device
        # only the rows some pair uses go to the device, once; batches gather from them there
        rows0, inv0 = np.unique(pairs[:, 0], return_inverse=True)
        rows1, inv1 = np.unique(pairs[:, 1], return_inverse=True)
        t0 = {k: torch.from_numpy(np.ascontiguousarray(v[rows0])).to(dev) for k, v in feats0.items()}
        t1 = {k: torch.from_numpy(np.ascontiguousarray(v[rows1])).to(dev) for k, v in feats1.items()}
        inv0, inv1 = torch.from_numpy(inv0).to(dev), torch.from_numpy(inv1).to(dev)
        bs = self._batch_size()
        for s in progress_bar(range(0, len(pairs), bs), desc="LightGlue", disable=not progress or len(pairs) <= bs,
                      leave=False):
            i0, i1 = inv0[s:s + bs], inv1[s:s + bs]
            c0, c1 = t0["count"][i0], t1["count"][i1]
            m, n = max(int(c0.max()), 1), max(int(c1.max()), 1)  # trim the padding no pair in the batch needs
            ar_m, ar_n = torch.arange(m, device=dev), torch.arange(n, device=dev)
            m0, conf0 = _lightglue_batched(
                lg, t0["keypoints"][i0, :m], t0["descriptors"][i0, :m].float(), ar_m[None] < c0[:, None],
                t0["image_size"][i0], t1["keypoints"][i1, :n], t1["descriptors"][i1, :n].float(),
                ar_n[None] < c1[:, None], t1["image_size"][i1], float(self.conf["match_threshold"]), self.policy.dtype)
            matches[s:s + bs, :m] = m0.cpu().numpy()
            confidence[s:s + bs, :m] = conf0.cpu().numpy()
        return matches, confidence

    @torch.inference_mode()
    def match_single(self, f0: FeatureDict, i: int, f1: FeatureDict, j: int) -> tuple[np.ndarray, np.ndarray]:
        """kornia's own LightGlue forward on one pair, unpadded: the reference ``match_pairs`` is tested against.

        Returns ``matches [count_i] int64``, ``confidence [count_i] float32`` as in ``match_pairs`` (row i only).
        """
        dev = self.device
        n0, n1 = int(f0["count"][i]), int(f1["count"][j])
        side = lambda f, r, n: {  # noqa: E731
            "keypoints": torch.from_numpy(f["keypoints"][r:r + 1, :n]).to(dev),
            "descriptors": torch.from_numpy(f["descriptors"][r:r + 1, :n].astype(np.float32)).to(dev),
            "image_size": torch.from_numpy(f["image_size"][r:r + 1]).to(dev)}
        out = self.lightglue({"image0": side(f0, i, n0), "image1": side(f1, j, n1)})
        m0 = out["matches0"][0].cpu().numpy()
        return m0, np.where(m0 > -1, out["matching_scores0"][0].float().cpu().numpy(), 0).astype(np.float32)


def _lightglue_batched(lg: nn.Module, kpts0: torch.Tensor, desc0: torch.Tensor, valid0: torch.Tensor,
                       size0: torch.Tensor, kpts1: torch.Tensor, desc1: torch.Tensor, valid1: torch.Tensor,
                       size1: torch.Tensor, threshold: float, amp: torch.dtype | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia LightGlue on a padded batch of pairs, through its submodules.

    ``kpts: [B, M, 2]`` px, ``desc: [B, M, D]`` float32, ``valid: [B, M]`` bool (False = padding),
    ``size: [B, 2]`` (W, H). Returns ``matches0: [B, M] int64`` (-1 = none) and ``confidence0: [B, M] float32``.

    Why not ``lg(data)``: its forward takes no masks (it pads only for its torch.compile path), so pairs of unequal
    keypoint counts cannot share a batch. Here every layer runs ``masked_forward`` with masks shaped
    ``[B, 1, M, 1]`` (kornia builds ``[B, M, 1]``, which broadcasts against the heads axis wrongly for B > 1), and
    padded entries of the assignment are set to -inf before the mutual-nearest filter.
    """
    from kornia.feature.lightglue import filter_matches, normalize_keypoints, sigmoid_log_double_softmax

    dev_type = kpts0.device.type
    k0 = normalize_keypoints(kpts0, size0)
    k1 = normalize_keypoints(kpts1, size1)
    full = bool(valid0.all()) and bool(valid1.all())
    mask0, mask1 = valid0[:, None, :, None], valid1[:, None, :, None]
    with torch.autocast(dev_type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        d0, d1 = lg.input_proj(desc0), lg.input_proj(desc1)
        e0, e1 = lg.posenc(k0), lg.posenc(k1)
        for layer in lg.transformers:
            # unpadded batches take the unmasked path: same maths, and it lets GPU attention use flash kernels
            d0, d1 = layer(d0, d1, e0, e1) if full else layer.masked_forward(d0, d1, e0, e1, mask0, mask1)
    # the assignment runs in float32: its softmax decides which confidences clear the threshold
    la = lg.log_assignment[-1]
    d0, d1 = d0.float(), d1.float()
    with torch.autocast(dev_type, enabled=False):
        md0, md1 = la.final_proj(d0), la.final_proj(d1)
        scale = md0.shape[-1] ** 0.25
        sim = torch.einsum("bmd,bnd->bmn", md0 / scale, md1 / scale)
        pair_valid = valid0[:, :, None] & valid1[:, None, :]  # [B, M, N]
        sim = sim.masked_fill(~pair_valid, float("-inf"))
        scores = sigmoid_log_double_softmax(sim, la.matchability(d0), la.matchability(d1))  # [B, M+1, N+1]
        # rows/columns that are all padding come out NaN from the softmax; -inf makes them lose every max
        scores[:, :-1, :-1] = scores[:, :-1, :-1].masked_fill(~pair_valid, float("-inf"))
        m0, _, ms0, _ = filter_matches(scores, threshold)
    m0 = torch.where(valid0, m0, -1)
    return m0, torch.where(m0 > -1, ms0, 0.0).float()

