"""workbook: the experiment front end (CLI, Ray sweeps, papermill notebooks, reports)."""
