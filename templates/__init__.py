"""Jinja2 templates of the report, the gate's Markdown and its JUnit XML, shipped as package data."""
