"""Chimera-Seg as a detectron2 meta-architecture: body + CLIP Semantic Head, trained with
SAM (text alignment on seen classes) + SGD (selective CLS distillation) (+ entry alignment)."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.modeling.body import SegmentationBody
from zss_bench.modeling.calibration import calibrate_seen, image_prior
from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.progress import current_iteration, put_scalar, training_progress
from zss_bench.modeling.regions import box_mask, crop_boxes, crop_images
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import TextClassifier

from .csh import CLIPSemanticHead, PlainProjection, entry_alignment_loss
from .sgd import keep_fraction, selective_global_distillation


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside a distributed run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@META_ARCH_REGISTRY.register()
class ChimeraSeg(ZSSSegmentor):
    def __init__(self, cfg):
        body = SegmentationBody(cfg)
        super().__init__(cfg, body.size_divisibility)
        c = cfg.MODEL.CHIMERA
        self.cfg_c, self.max_iter = c, cfg.SOLVER.MAX_ITER
        device = torch.device(cfg.MODEL.DEVICE)
        protocol = run_protocol(cfg)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.body = body
        n_blocks = c.CSH.NUM_BLOCKS if c.CSH.ENABLED else 1
        self.teacher = ClipTeacher(self.clip, entry_block=len(self.clip.model.visual.transformer.resblocks) - n_blocks)
        if c.CSH.ENABLED:
            self.head = CLIPSemanticHead(body.out_channels, self.teacher.vit, c.CSH.NUM_BLOCKS,
                                         token_norm=c.CSH.TOKEN_NORM, cls_token=c.CSH.CLS_TOKEN,
                                         train_ln=c.CSH.TRAIN_LN, stats_momentum=c.CSH.STATS_MOMENTUM,
                                         pool=self._csh_pool(c.CSH.STRIDE, body.stride), detail=c.CSH.DETAIL)
        else:
            self.head = PlainProjection(body.out_channels, self.clip.embed_dim)
        self.freeze_clip_parts("teacher.", "head.blocks.", "head.ln_post.")
        self.templates = protocol.templates(c.PROMPTS or None)
        self.text = TextClassifier(self.clip, self.templates, seen_class_names(cfg))
        self.logit_scale = 1.0 / c.LOGIT_TEMPERATURE
        self.gamma = c.INFERENCE.SEEN_CALIBRATION
        self.image_prior = c.INFERENCE.IMAGE_PRIOR
        if self.image_prior < 0:
            raise ValueError(f"MODEL.CHIMERA.INFERENCE.IMAGE_PRIOR must be >= 0, got {self.image_prior}")
        self.body_lr = c.BODY_LR_MULTIPLIER
        self.seed = max(int(cfg.SEED), 0)
        if c.SGD.CROPS < 0:
            raise ValueError(f"MODEL.CHIMERA.SGD.CROPS must be >= 0, got {c.SGD.CROPS}")
        self.to(device)

    @staticmethod
    def _csh_pool(stride: int, body_stride: int) -> int:
        """CSH.STRIDE (the head's token stride in input pixels; 0 = the body's own) -> pooling factor."""
        if stride == 0:
            return 1
        if stride < body_stride or stride % body_stride:
            raise ValueError(f"MODEL.CHIMERA.CSH.STRIDE {stride} must be 0 or a multiple of the body's stride "
                             f"{body_stride} (e.g. {body_stride}, {2 * body_stride}, {4 * body_stride})")
        return stride // body_stride

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.text.set_classes(class_names)  # unseen names reach the text encoder only now

    # --- shared forward -----------------------------------------------------------------------
    def _teacher_needs(self) -> tuple[str, ...]:
        """The teacher outputs this configuration uses now: training needs the CLS (SGD) and the entry
        tokens (token statistics, class token, entry alignment); evaluation only the entry class token
        (when the head takes it) and the CLS for the image prior. Nothing needed: the teacher is not run."""
        c, csh = self.cfg_c, isinstance(self.head, CLIPSemanticHead)
        if self.training:
            return ("cls", "entry")
        need = (("entry",) if csh and c.CSH.CLS_TOKEN == "teacher" else ()) + (("cls",) if self.image_prior else ())
        return need

    def _dense(self, images: torch.Tensor):
        features = self.body(images)
        need = self._teacher_needs()
        teacher = self.teacher.encode(self.rgb255(images), need) if need else {}
        if isinstance(self.head, CLIPSemanticHead) and self.training:
            self.head.update_stats(teacher["entry"])
        z, tokens, grid = self.head(features, teacher.get("entry"))
        return z, tokens, teacher, grid

    def train_losses(self, images, targets):
        c = self.cfg_c
        z, tokens, teacher, grid = self._dense(images)
        losses = {}
        if c.SAM.ENABLED:
            logits = self.logit_scale * self.text(z)
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            losses["loss_sam"] = c.SAM.WEIGHT * F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
            if c.SAM.ANCHOR_WEIGHT > 0:
                losses["loss_sam_anchor"] = c.SAM.ANCHOR_WEIGHT * self._anchor_loss(logits / self.logit_scale, targets)
            if c.SAM.AUX_WEIGHT > 0 and tokens is not None:
                aux = self.logit_scale * self.text(self.head.project_entry(tokens, grid))
                aux = F.interpolate(aux, size=targets.shape[-2:], mode="bilinear", align_corners=False)
                losses["loss_sam_aux"] = c.SAM.AUX_WEIGHT * F.cross_entropy(aux, targets, ignore_index=self.ignore_value)
        if c.SGD.ENABLED:
            progress = training_progress(self.max_iter)
            frac = keep_fraction(c.SGD.SCHEDULE, progress, c.SGD.START_FRACTION, c.SGD.END_FRACTION,
                                 tuple(c.SGD.STEP_MILESTONES), c.SGD.STEP_GAMMA)
            value, stats = selective_global_distillation(z, teacher["cls"], frac, loss=c.SGD.LOSS, pool=c.SGD.POOL,
                                                         temperature=c.SGD.INFONCE_TEMPERATURE)
            if c.SGD.CROPS > 0:
                value = (value + self._crop_distillation(images, z, frac)) / (1 + c.SGD.CROPS)
            losses["loss_sgd"] = c.SGD.WEIGHT * value
            put_scalar("sgd_fraction", frac)
        if c.CSH.ENABLED and c.CSH.ENTRY_ALIGN_WEIGHT > 0:
            losses["loss_entry"] = c.CSH.ENTRY_ALIGN_WEIGHT * entry_alignment_loss(tokens, grid, teacher["entry"])
        if not losses:
            raise ValueError("all Chimera-Seg losses are disabled (SAM, SGD and entry alignment)")
        return losses

    def _crop_distillation(self, images, z, frac) -> torch.Tensor:
        """Sum over SGD.CROPS random crops of SGD between each crop's teacher CLS and the dense
        features inside it. Crop positions are drawn from (seed, iteration), so a resumed run
        draws the same crops as an uninterrupted one; in a multi-process run they are drawn for the
        global batch and each rank takes its own images' boxes (rank r holds global images
        r*B..(r+1)*B-1, ``engine.data``), so ranks crop differently and the crops are those of one
        process given the global batch."""
        c = self.cfg_c.SGD
        grid = tuple(z.shape[-2:])
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + current_iteration())
        rgb = self.rgb255(images)
        total = z.new_zeros(())
        b = z.shape[0]
        rank, world = _rank_and_world()
        for _ in range(c.CROPS):
            boxes = crop_boxes(b * world, grid, tuple(c.CROP_SCALE), gen)[rank * b:(rank + 1) * b]
            cls = self.teacher.encode(crop_images(rgb, boxes, grid), ("cls",))["cls"]
            mask = box_mask(boxes, grid)  # on the host: its smallest count costs no device read
            value, _ = selective_global_distillation(z, cls, frac, loss=c.LOSS, pool=c.POOL,
                                                     temperature=c.INFONCE_TEMPERATURE, valid=mask.to(z.device),
                                                     valid_count=int(mask.flatten(1).sum(1).min()))
            total = total + value
        return total

    def _anchor_loss(self, cos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean 1 - cos(z, t_y) over labelled pixels (0 when a batch has none): a masked sum over the count,
        so no host read (the same mean as over the selected pixels, up to summation order)."""
        valid = targets != self.ignore_value
        own = cos.gather(1, targets.clamp(0, cos.shape[1] - 1).unsqueeze(1)).squeeze(1)
        total = torch.where(valid, 1.0 - own, 0.0).sum(dtype=torch.float32)
        return total / valid.sum().clamp_min(1)

    def eval_scores(self, images):
        z, _, teacher, _ = self._dense(images)
        logits = self.logit_scale * calibrate_seen(self.text(z), self.eval_seen_ids, self.gamma)
        if not self.image_prior:
            return logits
        # CLIP's zero-shot guess for the whole image, as a per-image class prior on every pixel
        return image_prior(logits, self.text(teacher["cls"].float()[:, None])[:, 0], self.logit_scale, self.image_prior)
