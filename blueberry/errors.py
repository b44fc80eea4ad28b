"""The one exception type for mistakes a user can fix.

Command-line entry points catch `UserError`, print its one-line message and exit with status 2;
everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in what the user asked for (a flag, a file, a config), with the fix in the message."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot work."""


class DataError(UserError):
    """A token-data directory that is missing, corrupt, or does not fit the model."""


class DamagedFile(UserError):
    """A file Blueberry wrote (a checkpoint, a shard) that fails its checksum or its structure check."""
