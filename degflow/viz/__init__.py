"""What results look like: image strips, plots (PNG, matplotlib Agg) and tables."""
