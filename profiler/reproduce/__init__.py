"""The source papers' efficiency experiments: setups, the comparison with published numbers, the figure."""
