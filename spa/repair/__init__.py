"""Repair: removing channels group by group in graph order, zeroed in the full-size model
(compensate), restoring output statistics after (correct), and the zero biases both need
while spa works (bias)."""
