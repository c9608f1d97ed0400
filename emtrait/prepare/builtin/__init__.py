"""Built-in dataset generators (registered in emtrait.prepare.generators.REGISTRY)."""
