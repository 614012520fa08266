"""The command line: the Hydra app of every entry point, config errors, override quoting, value types."""

from bksdm.cli.app import app
from bksdm.cli.errors import ConfigError, config_checks

__all__ = ["ConfigError", "app", "config_checks"]
