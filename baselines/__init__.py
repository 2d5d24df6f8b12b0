"""Gate specs and candidate plans shipped with bench (package data); users' own baselines live elsewhere."""
