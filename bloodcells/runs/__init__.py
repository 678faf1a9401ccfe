"""Runs: what each command does, one module per command (train, evaluate, predict, ...), plus
building a run's objects and resuming. May import every room; only the commands import it."""
