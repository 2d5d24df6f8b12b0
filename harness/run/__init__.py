"""Running: the plan of what to ask, the async client and session, the run store and its records."""
