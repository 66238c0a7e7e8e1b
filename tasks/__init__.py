"""Task definitions and data sources for mtlbench."""
