"""Engine half that touches weights (torch): reading tensors, REAP scoring, pruning, FP8 and streamed writing."""
