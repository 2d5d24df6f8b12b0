"""Reporting: the HTML report, its charts and expert maps, and the gate's Markdown and JUnit files."""
