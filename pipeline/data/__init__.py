"""Data layer: xarray / zarr / cf-xarray. Open, standardise, regrid, normalise, store. No model code."""
