"""CLIP-ZSS as a detectron2 meta-architecture: body + text projection, trained with the seen-class CE,
the global learning module (GLM) and the pixel learning module (PLM); no CLIP at inference."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.modeling.body import SegmentationBody
from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.projection import ProjectionClassifier
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import TextClassifier

from .glm import ClsMemoryBank, attention_pool, gather_batch, glm_infonce
from .plm import PrototypeSynthesizer, cluster_candidates, cluster_centroids, fuse_regions, plm_bce, region_means


@META_ARCH_REGISTRY.register()
class ClipZSSSeg(ZSSSegmentor):
    def __init__(self, cfg):
        body = SegmentationBody(cfg)
        super().__init__(cfg, body.size_divisibility)
        c = self.cfg_c = cfg.MODEL.CLIP_ZSS
        device = torch.device(cfg.MODEL.DEVICE)
        protocol = run_protocol(cfg)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.body = body
        text = TextClassifier(self.clip, protocol.templates(c.PROMPTS or None), seen_class_names(cfg))
        self.classifier = ProjectionClassifier(body.out_channels, text, "cosine", c.TEMPERATURE)
        self.teacher = ClipTeacher(self.clip) if (c.GLM.ENABLED or c.PLM.ENABLED) else None
        dim = self.clip.embed_dim
        self.bank = ClsMemoryBank(c.GLM.BANK_SIZE, dim) if c.GLM.ENABLED else None
        self.synthesizer = PrototypeSynthesizer(dim, c.PLM.SYNTH_HEADS) if c.PLM.ENABLED else None
        if c.PLM.ENABLED and not c.PLM.SCALES:
            raise ValueError("MODEL.CLIP_ZSS.PLM.SCALES is empty: give at least one K")
        self.freeze_clip_parts("teacher.")
        self.body_lr = c.BODY_LR_MULTIPLIER
        self.to(device)

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.classifier.text.set_classes(class_names)  # unseen names reach the text encoder only now

    # --- training ------------------------------------------------------------------------------
    def train_losses(self, images, targets):
        c = self.cfg_c
        z = self.classifier.embed(self.body(images))
        logits = F.interpolate(self.classifier.scores(z), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        losses = {"loss_ce": c.CE_WEIGHT * F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}
        if self.teacher is None:
            return losses
        need = ("cls",) + ((c.PLM.FEATURES,) if c.PLM.ENABLED else ())
        teacher = self.teacher.encode(self.rgb255(images), need)
        cls = teacher["cls"].float()
        if c.GLM.ENABLED:
            pooled, _ = attention_pool(cls, z, c.GLM.POOL_TEMPERATURE)
            # several processes: the global batch's CLS (negatives, and what every rank's bank enqueues)
            batch_cls, offset = gather_batch(cls)
            losses["loss_glm"] = c.GLM.WEIGHT * glm_infonce(pooled, batch_cls, self.bank.negatives(),
                                                            c.GLM.TEMPERATURE, offset)
            self.bank.push(batch_cls)
        if c.PLM.ENABLED:
            losses["loss_plm"] = c.PLM.WEIGHT * self._plm_loss(z, teacher[c.PLM.FEATURES].float(), cls, targets)
        return losses

    def _plm_loss(self, z: torch.Tensor, tokens: torch.Tensor, cls: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Seen regions (from the labels) and unnamed pseudo regions (K-means on CLIP's tokens, unlabelled
        pixels only) -> prototypes through the synthesizer -> BCE against [seen texts ; pseudo centroids].

        Two host reads per step for the whole batch, whatever the number of images, scales and clusters: (1) each
        image's seen labels and K-means cluster sizes, (2) the candidate regions' centroids and pixel counts. They
        decide shapes (how many regions an image has) and the fusion of candidates, which is sequential (a
        candidate is compared with the regions kept before it) and runs on the host; everything else stays on
        the device. The regions, prototypes and loss are those of one image at a time, bit for bit."""
        c = self.cfg_c.PLM
        h, w = z.shape[-2:]
        b_n, d = tokens.shape[:2]
        small = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        clip_up = F.interpolate(tokens, size=(h, w), mode="bilinear", align_corners=False)
        num_seen = self.classifier.text.embeddings.shape[0]
        unlabelled = small == self.ignore_value
        # the seen labels of each image (training targets hold seen ids and the ignore label only, data.inductive)
        present = torch.zeros(b_n, num_seen + 1, dtype=torch.bool, device=z.device)
        present.scatter_(1, torch.where(unlabelled, num_seen, small).flatten(1), True)
        xs = [tokens[b].reshape(d, -1).t() for b in range(b_n)]
        scales = [cluster_candidates(x, c.SCALES, c.ITERS) for x in xs]
        read = torch.cat([present[:, :num_seen].flatten().long(), *(s for sc in scales for _, _, s in sc)])
        read = read.cpu().tolist()  # host read 1
        labels = [[k for k in range(num_seen) if read[b * num_seen + k]] for b in range(b_n)]
        start = b_n * num_seen
        cands, up = [], []  # per image: [(assign, cluster, centroid)], the candidates at z's grid on unlabelled pixels
        for b, x in enumerate(xs):
            mine = []
            for assign, k_n, _ in scales[b]:
                mine += [(assign, j, cent) for j, cent in cluster_centroids(x, assign, read[start:start + k_n])]
                start += k_n
            grid = torch.stack([(a == j).view(tokens.shape[-2:]) for a, j, _ in mine])
            up.append(F.interpolate(grid[:, None].float(), size=(h, w), mode="nearest")[:, 0].bool() & unlabelled[b])
            cands.append(mine)
        counts = torch.cat([u.flatten(1).sum(1) for u in up]).float()  # pixel counts: exact in float32
        read = torch.cat([torch.cat([torch.stack([cent for _, _, cent in m]) for m in cands]).flatten(), counts])
        read = read.cpu()  # host read 2
        sizes = [len(m) for m in cands]
        cents_host = read[: sum(sizes) * d].view(-1, d).split(sizes)
        # large enough: compared as a tensor, as a region's pixel count always was (in float32)
        large = (read[sum(sizes) * d:] >= max(1.0, c.MIN_FRACTION * h * w)).split(sizes)
        protos, seen_targets, pseudo_protos, pseudo_cents = [], [], [], []
        for b in range(b_n):
            big = large[b].tolist()
            keep = [i for i in fuse_regions(cents_host[b], c.FUSE_THRESHOLD) if big[i]]
            regions = up[b][torch.as_tensor(keep, dtype=torch.long).to(z.device)]
            lab = torch.as_tensor(labels[b], dtype=torch.long).to(z.device)
            seen_masks = small[b][None] == lab[:, None, None]
            masks = torch.cat([seen_masks, regions])
            if masks.shape[0] == 0:
                continue
            out = self.synthesizer(region_means(z[b], masks), F.normalize(cls[b], dim=-1))
            protos.append(out[: len(lab)])
            seen_targets.append(lab)
            pseudo_protos.append(out[len(lab):])
            pseudo_cents.append(F.normalize(region_means(clip_up[b], regions), dim=-1))
        if not protos:
            return z.sum() * 0.0
        seen_p, pseudo_p = torch.cat(protos), torch.cat(pseudo_protos)
        cents = torch.cat(pseudo_cents)
        bank = torch.cat([self.classifier.text.embeddings, cents])
        targets_all = torch.cat([torch.cat(seen_targets), num_seen + torch.arange(len(cents), device=z.device)])
        exclude = torch.zeros(len(targets_all), bank.shape[0], dtype=torch.bool, device=z.device)
        if len(cents):  # a pseudo region's near-duplicates in other images are not its negatives
            dup = (cents @ cents.t()) >= c.FUSE_THRESHOLD
            dup.fill_diagonal_(False)
            exclude[len(seen_p):, num_seen:] = dup
        return plm_bce(torch.cat([seen_p, pseudo_p]), targets_all, bank, c.BCE_TEMPERATURE, exclude)

    # --- inference -----------------------------------------------------------------------------
    def eval_scores(self, images):
        return self.classifier(self.body(images), self.cfg_c.INFERENCE.SEEN_CALIBRATION, self.eval_seen_ids)
