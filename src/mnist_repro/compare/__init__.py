"""Comparison: reading run files (run_files), the published record (reference), the
statistics (stats), the table's rows (table) and when each decision was fixed (provenance)."""
