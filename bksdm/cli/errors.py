"""Config mistakes, found before anything heavy is loaded, reported as one message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ConfigError(ValueError):
    """A mistake in the user's config or command line, found before anything heavy was loaded: printed
    as its message alone (``HYDRA_FULL_ERROR=1`` shows the traceback too)."""


# Exceptions that, raised while the config is checked and the data source is opened, mean the config
# names something that is not there or not accepted (a missing folder, a bad value).
CONFIG_MISTAKES = (ValueError, FileNotFoundError, KeyError, TypeError)


@contextlib.contextmanager
def config_checks() -> Iterator[None]:
    """Turns the errors of the block (config checks, opening the data source, building the trainer) into
    ``ConfigError``s; Hydra's InstantiationException is unwrapped to the error it carries."""
    from hydra.errors import InstantiationException

    try:
        yield
    except ConfigError:
        raise
    except InstantiationException as error:
        cause = error.__cause__
        raise ConfigError(str(cause) if isinstance(cause, CONFIG_MISTAKES) else str(error)) from error
    except CONFIG_MISTAKES as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise ConfigError(message) from error
    except Exception as error:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if isinstance(error, MisconfigurationException):
            raise ConfigError(str(error)) from error
        raise
