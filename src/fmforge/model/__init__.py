"""The transformer and the formulas that count its parameters and FLOPs."""
