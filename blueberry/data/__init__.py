"""The on-disk token-shard contract (`format`) and its reader (`tokens`)."""
