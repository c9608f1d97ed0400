"""Built-in dataset generators (registered in emtrait.registry.GENERATORS)."""
