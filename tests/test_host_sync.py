"""Host synchronisations per training step, counted on the CPU (issue #29: no host waits in the hot loops).

On an accelerator, reading a device tensor on the host (``.item()``, ``int()/float()/bool()`` of a tensor, an ``if``
on one, ``.cpu()/.tolist()/.numpy()``) waits for every queued kernel; so do ops whose output size depends on the
data (``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, CUDA's ``bincount``...). ``HostSyncCounter``
counts them while one training step (the model's forward and backward) runs on the CPU. It tells device tensors
from host ones as a GPU run would: the model's parameters and buffers, whatever ``.to(device)`` returns, and
everything computed from at least one of them are device tensors; tensors made on the host (from Python numbers,
scipy's output, a box mask drawn by a CPU generator) are host tensors, and reading those costs nothing. Its one
blind spot: a tensor a factory makes directly on the device (``torch.zeros(..., device=d)``) counts as a host
tensor until it meets a device tensor.

Counts per training step (tiny synth models, 2 images, this counter on the code before and after the change):

* Chimera-Seg: 2 -> 0 (``bool(stats_ready)``: the EMA now picks copy or lerp on the device; ``float(top_sim.mean())``:
  the stats hold the tensor). With ``SGD.CROPS 2``: 6 -> 0 (the crop's valid count comes from the host's box mask).
  With ``SAM.ANCHOR_WEIGHT``: 5 -> 0 (``valid.any()`` and ``own[valid]``: now a masked mean).
* ZegFormer (20 queries, 3 supervised layers): 105 with 2 target classes, 465 with 12 -> 2 in both, whatever the
  number of matched queries: the valid-pixel counts of the batch (the valid pixels are then gathered by index, not
  by boolean indexing) and one copy of every layer's and image's Hungarian cost. Both are inherent: the counts
  decide the shapes of the gathered pixels, and the assignment is scipy's, on the host.
* CLIP-ZSS: 122 -> 2 for the batch: (1) the images' seen labels and K-means cluster sizes, (2) the candidate
  regions' centroids and pixel counts. Inherent: they decide how many regions and prototypes there are (shapes),
  and the fusion of candidates is sequential (each is compared with those kept before it), done on the host.
  The memory bank keeps its fill level on the host (``ClsMemoryBank``): 4 -> 0.
* ZegCLIP: 2 -> 0 (``F.one_hot`` checks its input's range on the CPU; it does not on CUDA, so 0 -> 0 there).

Outside the model, detectron2's training loop still reads every loss with ``.item()`` for its metrics.
"""
from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from run_helpers import world_fixtures

MICRO = "zss-micro-vit:random"

# ops that read a value on the host or whose output size depends on the data
_SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "nonzero", "argwhere", "masked_select", "_unique", "_unique2",
             "unique_dim", "unique_consecutive", "unique_dim_consecutive", "equal", "bincount"}
_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}
_READS = ("cpu", "tolist", "numpy")
_TAG = "_zss_on_device"


def _on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def _mark(t, on: bool = True) -> None:
    if isinstance(t, torch.Tensor):
        setattr(t, _TAG, on)


def _bool_index(args) -> bool:
    idx = args[1] if len(args) > 1 else None
    return isinstance(idx, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx)


class HostSyncCounter(TorchDispatchMode):
    """Counts the device -> host waits of the code run inside it (see the module docstring); ``where`` says which
    op at which line of the project's code."""

    def __init__(self, *device_tensors):
        super().__init__()
        self.count = 0
        self.where: collections.Counter = collections.Counter()
        self._initial = device_tensors

    def _hit(self, name: str) -> None:
        self.count += 1
        frames = [f for f in traceback.extract_stack()[:-2]
                  if ("/methods/" in f.filename or "/zss_bench/" in f.filename) and "site-packages" not in f.filename]
        loc = f"{'/'.join(frames[-1].filename.rsplit('/', 2)[-2:])}:{frames[-1].lineno}" if frames else "?"
        self.where[f"{name} at {loc}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(_on_device(t) for t in tensors)
        name = func._overloadpacket.__name__
        if on_device:
            if name in _SYNC_OPS:
                self._hit(name)
            elif name in _INDEX_OPS and _bool_index(args):
                self._hit(name + " (boolean mask)")
            elif name == "repeat_interleave" and kwargs.get("output_size") is None:
                self._hit(name)
        out = func(*args, **kwargs)
        if on_device:
            for t in tree_flatten(out)[0]:
                _mark(t)
        return out

    def __enter__(self):
        for t in self._initial:
            for x in (t if isinstance(t, (list, tuple)) else [t]):
                _mark(x)
        self._saved = {name: getattr(torch.Tensor, name) for name in (*_READS, "to")}
        counter, saved = self, self._saved

        def reader(name):
            def read(t, *a, **k):
                if not _on_device(t):
                    return saved[name](t, *a, **k)
                counter._hit(name)
                if name != "cpu":
                    return saved[name](t, *a, **k)
                host = saved["cpu"](t, *a, **k).clone()  # a copy on the host, as from a real device
                _mark(host, False)
                return host
            return read

        def to(t, *a, **k):
            out = saved["to"](t, *a, **k)
            device = torch._C._nn._parse_to(*a, **k)[0]
            if device is None or _on_device(t):  # a dtype change, or already on the device
                return out
            if out is t:  # .to(the model's device) of a host tensor: a copy on the device
                out = t.clone()
            _mark(out)
            return out

        for name in _READS:
            setattr(torch.Tensor, name, reader(name))
        torch.Tensor.to = to
        return super().__enter__()

    def __exit__(self, *exc):
        for name, f in self._saved.items():
            setattr(torch.Tensor, name, f)
        return super().__exit__(*exc)

    def report(self) -> str:
        return f"{self.count}: " + "; ".join(f"{n} x {w}" for w, n in self.where.most_common())


def test_the_counter_counts_device_reads_and_ignores_host_ones():
    dev = torch.randn(5)
    host = torch.randn(5)
    with HostSyncCounter(dev) as c:
        float(dev.sum())  # 1
        _ = dev[dev > 0]  # 1: boolean mask
        dev.nonzero()  # 1
        dev.unique()  # 1
        on_host = dev.cpu()  # 1
        on_host.tolist(), float(on_host.sum()), host[host > 0], host.tolist()  # host tensors: free
        moved = host.to(dev.device)
        bool(moved.any())  # 1: moved to the device, read back
        (dev * 2).argmax()  # no read: stays on the device
        dev.index_select(0, torch.tensor([1, 3]))  # no read
    assert c.count == 6, c.report()


# --------------------------------------------------------------------------------- one step per method

small_world, world = world_fixtures(n_train=4, n_val=2, seed=3)  # ``world``: prepared into the test's own cache


def _build(world, tmp_path, method, *opts):
    from detectron2.modeling import build_model
    from run_helpers import tiny

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    protocol = load_protocol("synth-15-5")
    register_protocol(protocol, world)
    cfg = build_run_config(get_method(method), protocol, seed=0, output_dir=str(tmp_path), data_root=str(world),
                           clip=MICRO, opts=tiny(1, 1000, *opts))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def _batch(num_classes: int = 15, seed: int = 0, masks: bool = False) -> list[dict]:
    """Two 32 px images as the training mapper gives them; ``masks``: the per-class-mask mapper's extra fields."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(2):
        target = torch.randint(0, num_classes, (32, 32), generator=g)
        target[: 8 * (i + 1)] = 255  # unlabelled pixels
        item = {"image": torch.randint(0, 255, (3, 32, 32), generator=g, dtype=torch.uint8).float(), "sem_seg": target}
        if masks:
            classes = torch.unique(target[target != 255])
            item["masks"] = torch.stack([target == k for k in classes])
            item["classes"] = classes
        batch.append(item)
    return batch


def count_step(model, batch) -> HostSyncCounter:
    """The host reads of one training step: the model's forward (losses) and the backward of their sum."""
    model.zero_grad(set_to_none=True)
    with HostSyncCounter(list(model.parameters()), list(model.buffers())) as counter:
        losses = model(batch)
        sum(losses.values()).backward()
    print(f"{type(model).__name__}: {counter.report()}")
    return counter


@pytest.mark.parametrize("opts", [(), ("MODEL.CHIMERA.SGD.CROPS", "2"), ("MODEL.CHIMERA.SAM.ANCHOR_WEIGHT", "0.5"),
                                  ("MODEL.CHIMERA.SAM.AUX_WEIGHT", "0.5", "MODEL.CHIMERA.CSH.ENTRY_ALIGN_WEIGHT", "1.0")])
def test_chimera_seg_trains_without_host_reads(world, tmp_path, opts):
    model = _build(world, tmp_path, "chimera", *opts)
    for step in range(2):  # the first step (statistics taken as they are) and a later one (EMA)
        counter = count_step(model, _batch(seed=step))
        assert counter.count == 0, counter.report()  # before: 2 per step (+2 per crop, +2 with the anchor)


@pytest.mark.parametrize("per_pair", [True, False], ids=["cpu-pair-by-pair", "accelerator-vectorised"])
def test_zegformer_host_reads_do_not_grow_with_the_matched_queries(world, tmp_path, monkeypatch, per_pair):
    from zss_bench.methods.zegformer import meta_arch

    if not per_pair:  # the path an accelerator takes: every matched pair's losses in one call
        monkeypatch.setattr(meta_arch, "PAIR_BY_PAIR_DEVICES", ())
    model = _build(world, tmp_path, "zegformer", "MODEL.ZEGFORMER.NUM_QUERIES", "20")
    few = count_step(model, _batch(num_classes=2, masks=True))
    many = count_step(model, _batch(num_classes=12, masks=True))
    # the valid-pixel counts and all Hungarian costs of the step, in one read each (before: 105 and 465, i.e.
    # boolean indexing per matched query, per loss and layer, and a cost copy per image and layer)
    assert few.count == many.count == 2, (few.report(), many.report())


def test_clip_zss_host_reads_are_two_per_step(world, tmp_path):
    model = _build(world, tmp_path, "clip-zss")  # default PLM scales (2, 4, 8), GLM with its memory bank
    for step in range(2):
        counter = count_step(model, _batch(seed=step))
        # the labels and K-means cluster sizes; the candidates' centroids and pixel counts (before: 122)
        assert counter.count == 2, counter.report()


def test_zegclip_trains_without_host_reads(world, tmp_path):
    model = _build(world, tmp_path, "zegclip")
    counter = count_step(model, _batch())
    assert counter.count == 0, counter.report()  # before: 2 (F.one_hot's range check on the CPU)


def test_the_memory_bank_reads_its_fill_level_again_after_a_load():
    from zss_bench.methods.clip_zss.glm import ClsMemoryBank

    bank = ClsMemoryBank(4, 3)
    with HostSyncCounter(list(bank.buffers())) as counter:
        bank.push(torch.randn(3, 3))
        assert bank.negatives().shape == (3, 3)
        bank.push(torch.randn(3, 3))
        assert bank.negatives().shape == (4, 3)
    assert counter.count == 0, counter.report()
    other = ClsMemoryBank(4, 3)
    other.load_state_dict({**bank.state_dict(), "filled": torch.tensor(2)})  # a checkpoint with 2 entries
    assert other.negatives().shape == (2, 3)
    other.filled.fill_(1)  # any other write to the buffer
    assert other.negatives().shape == (1, 3)
    moved = ClsMemoryBank(4, 3)
    moved.push(torch.randn(2, 3))
    moved.to(torch.float64)
    assert moved.negatives().shape == (2, 3) and int(moved.pointer) == 2
