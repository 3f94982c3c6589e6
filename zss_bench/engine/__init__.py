"""The runner: config assembly, the seeded data stream, detectron2 training, evaluation, records.

``zss_bench.engine.run.run_method`` is what ``zss-bench run`` calls.
"""
