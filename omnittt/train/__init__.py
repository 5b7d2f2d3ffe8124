"""Training loop (accelerate), optimiser groups, checkpoint save/load, run directory, export."""
