"""Divergence from base: how far a candidate's next-token distributions moved from its base's."""
