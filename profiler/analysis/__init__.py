"""Scaling analysis: how each metric grows with the sequence length L, per model variant.

fit (one curve) -> series (a table's variants) -> curves (fits with uncertainty) -> crossovers ->
table (the analysis of a whole results table).
"""
