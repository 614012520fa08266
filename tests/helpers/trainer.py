"""A quiet Lightning trainer on the CPU."""


def cpu_trainer(tmp_path, **overrides):
    """A quiet CPU Lightning trainer for tests: no logger, checkpoints, progress bar or summary unless asked."""
    import lightning as L

    settings = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return L.Trainer(**{**settings, **overrides})
