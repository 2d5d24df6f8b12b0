"""Small checkpoints built offline, for tests, CI and demos (the scripted chat template ships here as package data)."""
