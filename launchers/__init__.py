"""Dagster run launchers for this platform (configured in the instance's dagster.yaml)."""
