"""The one exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class UserError(Exception):
    """Input a user can fix (a file, a column, a flag); the message says what is wrong and what to do."""

    exit_code = 1
