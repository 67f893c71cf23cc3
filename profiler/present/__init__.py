"""What a person reads: the live sweep display, the scaling report, the figures, the model catalog."""
