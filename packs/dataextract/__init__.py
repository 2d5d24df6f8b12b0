"""Data extraction: realistic documents in, schema-bound JSON out, unstated fields left null."""

from bench.packs.dataextract.pack import DataExtractPack

__all__ = ["DataExtractPack"]
