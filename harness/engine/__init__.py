"""The bundled engine: memory fit, REAP pruning, FP8 and offline toy models (compute needs the [engine] extra).

``planning`` reads headers and decides (torch-free, so ``bench fit`` runs without the extra);
``compute`` reads weights and writes checkpoints; ``toys`` builds small models offline. Imports
go one way only: toys -> compute -> planning.
"""
