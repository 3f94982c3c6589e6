"""Training data for ``zss-bench run``: a seeded, resumable stream of seen-only targets.

Why not detectron2's TrainingSampler: its infinite shuffle restarts from the beginning after
``--resume`` and its augmentations draw from process-global RNGs, so a resumed run would see
different batches than an uninterrupted one. Here sample ``p`` of the stream (a global
position: iteration x total batch + rank offset) is fully determined by ``(seed, p)``: the
image comes from a seeded permutation of epoch ``p // N`` and its augmentation from
``np.random.default_rng([seed, p])``. Resuming at iteration ``i`` restarts the stream at
``p = i x batch`` and reproduces the uninterrupted run exactly, for any number of workers.
In a multi-process run rank ``r`` takes positions ``i x total + r x per_rank + j``: ranks see
different images with their own augmentation draws, and together exactly the global batch of one
process with the same seed (same images, same augmentations, in rank order).
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zss_bench.data.inductive import assert_seen_only


class InductiveTrainMapper:
    """dataset dict + rng -> model input; asserts the target holds seen ids only."""

    def __init__(self, cfg):
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        self.num_seen, self.ignore_label = len(meta.stuff_classes), meta.ignore_label
        self.format = cfg.INPUT.FORMAT
        self.min_sizes = tuple(cfg.INPUT.MIN_SIZE_TRAIN)
        self.max_size = cfg.INPUT.MAX_SIZE_TRAIN
        self.crop = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else None
        if self.crop and cfg.INPUT.CROP.TYPE != "absolute":
            raise ValueError("zss-bench's training mapper supports INPUT.CROP.TYPE 'absolute' only")
        self.flip = cfg.INPUT.RANDOM_FLIP
        self.targets_checked = 0

    def __call__(self, d: dict, rng: np.random.Generator) -> dict:
        image = utils.read_image(d["file_name"], format=self.format)
        with Image.open(d["sem_seg_file_name"]) as im:
            target = np.array(im)
        assert_seen_only(target, self.num_seen, self.ignore_label, where=f"training target {d['sem_seg_file_name']}")
        self.targets_checked += 1
        h, w = image.shape[:2]
        if target.shape != (h, w):
            raise ValueError(f"{d['sem_seg_file_name']}: target size {target.shape} differs from image {d['file_name']}")
        tfms = []
        short = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        scale = min(short / min(h, w), self.max_size / max(h, w))
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        if (nh, nw) != (h, w):
            tfms.append(T.ResizeTransform(h, w, nh, nw, Image.BILINEAR))
        if self.crop:
            ch, cw = min(self.crop[0], nh), min(self.crop[1], nw)
            y0, x0 = int(rng.integers(nh - ch + 1)), int(rng.integers(nw - cw + 1))
            tfms.append(T.CropTransform(x0, y0, cw, ch))
            nh, nw = ch, cw
        if self.flip == "horizontal" and rng.random() < 0.5:
            tfms.append(T.HFlipTransform(nw))
        elif self.flip == "vertical" and rng.random() < 0.5:
            tfms.append(T.VFlipTransform(nh))
        tl = T.TransformList(tfms)
        image, target = tl.apply_image(image), tl.apply_segmentation(target)
        return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "sem_seg": torch.as_tensor(target.astype("int64")),
                "height": h, "width": w, "file_name": d["file_name"], "image_id": d.get("image_id")}


class PerClassMaskMapper(InductiveTrainMapper):
    """For mask-classification methods: also one binary mask per seen class present in the (already
    checked, augmented) target: ``classes`` (K,) seen ids and ``masks`` (K, H, W) bool. Ignored pixels
    (unseen and void) belong to no mask."""

    def __call__(self, d: dict, rng: np.random.Generator) -> dict:
        out = super().__call__(d, rng)
        target = out["sem_seg"]
        classes = torch.unique(target[target != self.ignore_label])
        out["classes"] = classes
        out["masks"] = target[None] == classes[:, None, None]
        return out


MAPPERS = {"semantic": InductiveTrainMapper, "per-class-masks": PerClassMaskMapper}  # keys: plugins.TRAIN_MAPPERS


def build_train_mapper(cfg, kind: str = "semantic") -> InductiveTrainMapper:
    """The training mapper a plugin declares (``MethodPlugin.train_mapper``); every kind runs the
    inductive guard on every target before anything else."""
    if kind not in MAPPERS:
        from zss_bench.registry import UnknownNameError

        raise UnknownNameError.for_name("training mapper", kind, sorted(MAPPERS))
    return MAPPERS[kind](cfg)


class SeededTrainStream(IterableDataset):
    """Infinite stream of per-rank batches; batch ``i`` depends only on ``(seed, i, rank)``."""

    def __init__(self, dicts: list[dict], mapper, per_rank: int, seed: int, rank: int, world: int, start_iter: int = 0):
        self.dicts, self.mapper, self.per_rank = dicts, mapper, per_rank
        self.seed, self.rank, self.world, self.start_iter = int(seed), rank, world, start_iter
        self._perm_epoch, self._perm = None, None

    def _index(self, p: int) -> int:
        epoch, k = divmod(p, len(self.dicts))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 7]).permutation(len(self.dicts))
            self._perm_epoch = epoch
        return int(self._perm[k])

    def batch(self, it: int) -> list[dict]:
        total = self.per_rank * self.world
        out = []
        for j in range(self.per_rank):
            p = it * total + self.rank * self.per_rank + j
            out.append(self.mapper(self.dicts[self._index(p)], np.random.default_rng([self.seed, p, 11])))
        return out

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        it = self.start_iter + wid
        while True:
            yield self.batch(it)
            it += nw


def build_train_loader(cfg, mapper, start_iter: int = 0) -> DataLoader:
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    if not dicts:
        raise ValueError(f"training set {cfg.DATASETS.TRAIN[0]} is empty")
    world, total = comm.get_world_size(), cfg.SOLVER.IMS_PER_BATCH
    if total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} is not divisible by the {world} processes")
    stream = SeededTrainStream(dicts, mapper, total // world, cfg.SEED, comm.get_rank(), world, start_iter)
    workers = int(cfg.DATALOADER.NUM_WORKERS)
    # CUDA: batches in pinned memory, so the model's non_blocking copies overlap the previous step; workers stay
    # alive across the stream's epochs (the stream is infinite; only a resume builds a second loader)
    return DataLoader(stream, batch_size=None, num_workers=workers,
                      pin_memory=str(cfg.MODEL.DEVICE).startswith("cuda"), persistent_workers=workers > 0)
