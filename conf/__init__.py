"""Hydra configuration shipped with the package (found via pkg://bksdm.conf or beside the code)."""
