"""Stable Diffusion parts in and out: loading from a hub id, a folder or builtin:*, the built-in offline
teachers, the frozen pipeline of grids and evaluation, student export."""
