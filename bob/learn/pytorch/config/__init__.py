"""bob configuration files of bob.learn.pytorch (``bob.bio.config`` / ``bob.bio.pipeline`` resources)."""
