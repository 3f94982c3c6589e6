"""zss-bench: protocols, metrics and runners for inductive zero-shot semantic segmentation.

Data flows protocol -> dataset -> method -> evaluator -> record -> table; each stage is a
subpackage (``protocol``, ``data``, methods under ``zss_bench.methods``, ``evaluation``,
``records``, ``tables``). Importing the package is cheap: nothing heavy (torch,
detectron2) is imported here.
"""

__version__ = "0.1.0"
