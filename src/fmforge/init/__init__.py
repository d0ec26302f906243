"""``fmforge init``: from folders of your own files to a run config sized for a budget."""
