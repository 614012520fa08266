"""What keeps a run alive and knows nothing of diffusion: atomic writes, checkpoint I/O, resume, the CSV
logger, the FSDP strategy, host-side agreement between ranks, RNG states, memory figures."""
