"""Torch-free engine half: checkpoint headers, MoE families, calibration mixes and the prune, FP8 and fit plans.

Nothing here may import torch at module level: ``bench fit`` runs without the engine extra.
"""
