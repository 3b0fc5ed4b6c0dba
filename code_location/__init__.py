"""The Dagster code location of dagster-deepfake (upper layer): `code_location.definitions.defs`."""
