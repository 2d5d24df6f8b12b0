"""Comparing: finished runs read back, the gate spec, paired verdicts and stored baselines."""
