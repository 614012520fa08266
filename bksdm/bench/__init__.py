"""``python -m bksdm.bench``: how fast one KD training step runs and how much memory it takes.

Warm-up steps, then timed optimizer steps of the real training step (``DistillModule`` under a
Lightning Trainer, built from the same config groups as training) on a fixed random batch, so that data
loading is left out. ``bench.mode=reference`` runs the step the way BK-SDM's reference implementation
does (VAE and text encoder every step, eager attention, no inference mode, unfused AdamW, a host sync
per step); ``bench.mode=both`` runs both in one process and prints the ratio.
"""
