"""Reproduce the seven-step 'under 10k parameters, 99.4% on MNIST' drill-down."""
