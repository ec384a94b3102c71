"""User-facing errors: one line, no traceback, exit code 2 from the CLI."""


class UserError(Exception):
    """A problem with the user's input (config, data, files) that the user can fix."""


class PartitioningError(UserError):
    """A parameter or mesh that the partitioning rules cannot place."""
