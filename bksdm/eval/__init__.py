"""Evaluation: prompts, reproducible generation, and FID / IS / CLIP score with pluggable extractors."""
