"""Diagnostic: how well does the frozen toy CLIP segment synth-15-5 by itself (no training)?

Scores every val image's dense patch tokens (through ln_post + proj) against all 20 class text
embeddings and reports S/U/hIoU for: the plain last block, a MaskCLIP-style last block (value
path only, with MLP) and the value path without MLP. Used in methods/chimera/README.md.
Usage: python scripts/probe_clip_dense.py [WORLD_ROOT]  (default: the cached synth world)
"""
import glob, sys
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
from zss_bench.clip.toy import default_toy_clip
from zss_bench.clip import class_text_embeddings, PartialViT
from zss_bench.protocol import load_protocol
from zss_bench.metrics.confusion import ConfusionMatrix
p = load_protocol('synth-15-5'); names = list(p.classes)
clip = default_toy_clip(); vit = PartialViT(clip.model.visual).freeze()
T = F.normalize(class_text_embeddings(clip, names, p.templates('single')).float(), dim=-1)
from zss_bench.cache import cache_path
root = (sys.argv[1].rstrip('/') + '/') if len(sys.argv) > 1 else sorted(glob.glob(str(cache_path('synth-world')) + '/*/'))[0]
stems = open(root + 'ImageSets/Segmentation/val.txt').read().split()
lut = p.native_lut()
pc = clip.preprocess_cfg; mean = torch.tensor(pc['mean']).view(1,3,1,1); std = torch.tensor(pc['std']).view(1,3,1,1)
def maskclip_last(x):
    blk = vit.blocks[-1]
    y = blk.ln_1(x)
    attn = blk.attn
    w, b = attn.in_proj_weight, attn.in_proj_bias
    d = x.shape[-1]
    v = F.linear(y, w[2*d:], b[2*d:])
    v = attn.out_proj(v)
    x = x + blk.ls_1(v) if hasattr(blk,'ls_1') else x + v
    x = x + (blk.ls_2(blk.mlp(blk.ln_2(x))) if hasattr(blk,'ls_2') else blk.mlp(blk.ln_2(x)))
    return x
cms = {k: ConfusionMatrix(len(names)) for k in ('plain', 'maskclip', 'maskclip_nomlp')}
for s in stems:
    img = torch.from_numpy(np.array(Image.open(f'{root}JPEGImages/{s}.jpg').convert('RGB'))).permute(2,0,1)[None].float()/255
    gt = lut[np.array(Image.open(f'{root}SegmentationClass/{s}.png'))]
    x = (F.interpolate(img, size=(64,64), mode='bilinear') - mean)/std
    with torch.no_grad():
        t = vit.tokens(x)
        pre = vit.run_blocks(t, 0, vit.num_blocks-1)
        outs = {'plain': vit.run_blocks(pre, vit.num_blocks-1), 'maskclip': maskclip_last(pre)}
        blk=vit.blocks[-1]; d=pre.shape[-1]; y=blk.ln_1(pre); v=blk.attn.out_proj(F.linear(y, blk.attn.in_proj_weight[2*d:], blk.attn.in_proj_bias[2*d:]))
        outs['maskclip_nomlp'] = pre + v
        for k, o in outs.items():
            z = F.normalize(vit.project(o[:, 1:]), dim=-1)  # (1, hw, D)
            g = int(z.shape[1]**.5)
            sc = (z @ T.t()).transpose(1,2).reshape(1, len(names), g, g)
            pred = F.interpolate(sc, size=gt.shape, mode='bilinear').argmax(1)[0].numpy().astype(np.uint8)
            cms[k].update(pred, gt.astype(np.uint8))
un = set(p.unseen_ids)
for k, cm in cms.items():
    m = cm.matrix.astype(float) if hasattr(cm,'matrix') else np.asarray(cm.mat, float)
    iou = np.diag(m) / (m.sum(0) + m.sum(1) - np.diag(m) + 1e-9) * 100
    S = np.mean([iou[i] for i in range(len(names)) if i not in un]); U = np.mean([iou[i] for i in un])
    print(f'{k:16s} S {S:.1f} U {U:.1f} h {2*S*U/(S+U):.1f}')
