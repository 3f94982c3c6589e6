"""Imported by every Python process started with this folder on PYTHONPATH (spawned run workers too): the CLIP
ViT is not frozen. Diagnosis only (scripts/fidelity/unfrozen_clip_run.py)."""
import zss_diag_unfreeze

zss_diag_unfreeze.apply()
