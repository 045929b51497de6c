"""Video diffusion models for climate data: an HPC experiment pipeline."""

# Bind Python's sqlite3 to the system SQLite before anything else can load one: the eccodes wheel
# (pulled in by cfgrib, which xarray imports while guessing engines) bundles SQLite 3.26, and if it
# is loaded first, MLflow's SQLite store fails with "malformed database schema" (it needs >= 3.31).
import sqlite3 as _sqlite3  # noqa: F401

# Likewise PROJ: eccodes' eckit bundles a newer libproj than pyproj's; loaded first, its symbols serve
# pyproj, which then rejects its own proj.db ("DATABASE.LAYOUT.VERSION.MINOR = 4 whereas >= 6 is
# expected") and every rotated-pole or projected grid fails. pyproj's libproj goes first.
import pyproj as _pyproj  # noqa: F401

__version__ = "0.1.0"
