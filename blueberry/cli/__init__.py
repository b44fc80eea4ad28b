"""Console entry points: parse arguments into configs, call one library function."""
