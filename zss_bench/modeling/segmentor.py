"""Plumbing every zss-bench meta-architecture shares, so methods only write their own math.

Handles detectron2's batched-input format, normalisation, padding (targets padded with the
protocol's ignore label), upsampling scores to the input size, whole-image or sliding-window
inference and ``sem_seg_postprocess`` back to each image's original size. The evaluation class
list is handed over by the runner *after* training through :meth:`set_eval_classes`, so nothing
about unseen classes is present while a method trains.

Checkpoints hold what was trained: the submodules a method declares as frozen CLIP
(:meth:`ZSSSegmentor.freeze_clip_parts`) are left out of ``state_dict()`` and rebuilt from the
run's CLIP spec when the model is built; the checkpoint keeps the CLIP weights' sha256, and
loading it into a model built on other CLIP weights is an error.
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from zss_bench.modeling.inference import infer

CLIP_HASH_KEY = "clip_weights_sha256"


class ZSSSegmentor(nn.Module):
    """Base class. Subclasses implement ``train_losses(images, targets, **inputs) -> dict`` and
    ``eval_scores(images) -> (B, K, h, w)`` over the classes given to ``set_eval_classes``.
    ``train_inputs`` names extra per-image fields of the training mapper's output that
    ``train_losses`` receives as lists (e.g. ``("masks", "classes")`` from the per-class-mask mapper)."""

    train_inputs: tuple[str, ...] = ()

    def __init__(self, cfg, size_divisibility: int):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE  # = the protocol's ignore_label (build_run_config)
        self.size_divisibility = max(1, size_divisibility)
        self.eval_mode = cfg.ZSS.EVAL.MODE
        self.slide_crop, self.slide_stride = cfg.ZSS.EVAL.SLIDE_CROP, cfg.ZSS.EVAL.SLIDE_STRIDE
        self.eval_class_names: list[str] | None = None
        self.clip = None  # the run's LoadedClip (use_clip); not a submodule
        self._frozen_clip_prefixes: tuple[str, ...] = ()
        self.body_lr = 1.0  # a method's BODY_LR_MULTIPLIER: the learning rate of its ``body.`` parameters
        # MODEL.CHANNELS_LAST (engine.precision): NHWC input for NHWC kernels (getattr: configs built before the key)
        self.memory_format = torch.channels_last if getattr(cfg.MODEL, "CHANNELS_LAST", False) else torch.contiguous_format

    @property
    def device(self):
        return self.pixel_mean.device

    def rgb255(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised body input -> RGB in 0..255 (what the CLIP teacher's own preprocessing takes)."""
        return images * self.pixel_std + self.pixel_mean

    # --- CLIP bookkeeping --------------------------------------------------------------------
    def use_clip(self, clip) -> None:
        """Say which CLIP the model was built on: its record goes into the run record and its weights'
        sha256 into every checkpoint."""
        self.clip = clip
        digest = bytes.fromhex(clip.record()["weights_hash"])
        self.register_buffer(CLIP_HASH_KEY, torch.tensor(list(digest), dtype=torch.uint8))

    def clip_record(self) -> dict | None:
        return self.clip.record() if self.clip is not None else None

    def freeze_clip_parts(self, *prefixes: str) -> None:
        """Submodules (``"teacher."``, ``"head.blocks."``) holding frozen CLIP weights: their
        non-trainable tensors stay out of checkpoints (trainable ones inside them are kept)."""
        self._frozen_clip_prefixes = tuple(prefixes)

    def _frozen_keys(self, keys, prefix: str = "") -> list[str]:
        if not self._frozen_clip_prefixes:
            return []
        trainable = {prefix + n for n, p in self.named_parameters() if p.requires_grad}
        heads = tuple(prefix + p for p in self._frozen_clip_prefixes)
        return [k for k in keys if k.startswith(heads) and k not in trainable]

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in self._frozen_keys(list(out), prefix):
            del out[key]
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint (with or without the frozen CLIP weights); the frozen parts keep the
        weights this model was built with, which must be the ones the checkpoint was trained on."""
        state_dict = dict(state_dict)
        theirs, ours = state_dict.get(CLIP_HASH_KEY), getattr(self, CLIP_HASH_KEY, None)
        if theirs is not None and ours is not None and not torch.equal(theirs.to(ours.device), ours):
            raise ValueError(f"checkpoint was trained on CLIP weights {bytes(theirs.tolist()).hex()[:12]}, but this "
                             f"model was built on {bytes(ours.tolist()).hex()[:12]} ({self.clip.record().get('spec')}); "
                             "pass the --clip the checkpoint's run record names")
        full = super().state_dict()
        for key in self._frozen_keys(list(full)):
            state_dict.setdefault(key, full[key])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def lr_multipliers(self) -> dict:
        """{parameter-name prefix: learning-rate multiplier} the optimizer applies (the body's by default)."""
        return {"body.": self.body_lr} if self.body_lr != 1.0 else {}

    # --- the runner's interface ------------------------------------------------------------
    def set_eval_classes(self, class_names: list[str], seen_ids: list[int]) -> None:
        """Called once training is over: the full class list (seen + unseen) to score."""
        self.eval_class_names = list(class_names)
        self.eval_seen_ids = list(seen_ids)

    # --- to implement ----------------------------------------------------------------------
    def train_losses(self, images: torch.Tensor, targets: torch.Tensor) -> dict:
        raise NotImplementedError

    def eval_scores(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- detectron2 entry point ------------------------------------------------------------
    def forward(self, batched_inputs):
        images = [x["image"].to(self.device, non_blocking=True) for x in batched_inputs]  # pinned: overlaps
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, self.size_divisibility)
        batch = images.tensor.contiguous(memory_format=self.memory_format)
        if self.training:
            targets = [x["sem_seg"].to(self.device, non_blocking=True) for x in batched_inputs]
            targets = ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor
            extra = {key: [x[key] for x in batched_inputs] for key in self.train_inputs}
            return self.train_losses(batch, targets.long(), **extra)
        if self.eval_class_names is None:
            raise RuntimeError("set_eval_classes() must be called before inference")
        scores = self._infer(batch)
        results = []
        for score, image_size, inp in zip(scores, images.image_sizes, batched_inputs):
            height, width = inp.get("height", image_size[0]), inp.get("width", image_size[1])
            results.append({"sem_seg": sem_seg_postprocess(score, image_size, height, width)})
        return results

    def _infer(self, images: torch.Tensor) -> torch.Tensor:
        return infer(self.eval_scores, images, self.eval_mode, self.slide_crop, self.slide_stride)
