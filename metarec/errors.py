"""The one exception type for mistakes a user can cause; the CLI prints it as one line."""


class UserError(Exception):
    """Bad input, bad path, missing data, wrong device: says what is wrong and what to do."""
