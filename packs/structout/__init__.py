"""Structured output: JSON that follows a given JSON Schema, asked with the server's guided decoding
(``response_format``) and with the schema in the prompt only, so the two can be told apart."""

from bench.packs.structout.pack import StructOutPack

__all__ = ["StructOutPack"]
