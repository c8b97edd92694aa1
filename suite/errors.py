"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (unknown name, bad config value, missing or corrupt data): one sentence, no traceback."""


class DataError(UserError):
    """Data that is missing, cannot be downloaded, or fails its checksum."""
