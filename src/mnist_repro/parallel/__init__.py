"""Parallel runs of the DVC pipeline: the matrix runner (matrix) over slots of GPUs or cores
(slots), and how long the pending runs take (estimate)."""
