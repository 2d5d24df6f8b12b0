"""Serving: read what a checkpoint says about itself, launch vLLM, prove the stack, scan replies."""
