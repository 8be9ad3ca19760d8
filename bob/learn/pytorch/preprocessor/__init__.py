"""Preprocessors of bob.learn.pytorch."""
