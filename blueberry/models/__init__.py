"""Model kinds, one folder each (config, model, Task), the registry that names them, and `RunConfig`."""
