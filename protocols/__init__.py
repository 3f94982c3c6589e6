"""Shipped benchmark protocol YAML files (installed as package ``zss_bench.protocols``)."""
