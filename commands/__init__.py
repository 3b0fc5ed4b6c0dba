"""Commands that drive the platform (upper layer): the `dagster-deepfake` CLI, the demo and the benchmark."""
