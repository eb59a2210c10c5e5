"""The one exception type for user mistakes; entry points print it without a traceback."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file/line/key and what to do."""
