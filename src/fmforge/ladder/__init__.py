"""A model ladder: small models of a config's family trained on the run's own
data, and the scaling law fitted to their held-out bits per byte."""
