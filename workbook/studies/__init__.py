"""The analyses behind the notebooks: each returns tables (pandas) and figures, so a
notebook is a parameters cell and a few calls."""
