"""Method plugins (installed as ``zss_bench.methods``): one small package per method.

Each method package registers its detectron2 meta-architecture and adds its config keys
(``add_<name>_config``), in the style of detectron2's ``projects/``.
"""
