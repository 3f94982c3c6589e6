"""Building blocks shared by method plugins (the body, the segmentor plumbing).

Importing this package imports detectron2 (through ``zss_bench.detectron2_compat``).
"""
from zss_bench.extras import require

require("train", "torch", what="zss_bench.modeling")
