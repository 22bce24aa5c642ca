"""Model card templates, one per family, rendered by zoo.hub at save/push time."""
