"""Video diffusion models for climate data: an HPC experiment pipeline."""

# Bind Python's sqlite3 to the system SQLite before anything else can load one: the eccodes wheel
# (pulled in by cfgrib, which xarray imports while guessing engines) bundles SQLite 3.26, and if it
# is loaded first, MLflow's SQLite store fails with "malformed database schema" (it needs >= 3.31).
import sqlite3 as _sqlite3  # noqa: F401

__version__ = "0.1.0"
