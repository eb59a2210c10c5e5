"""The one exception type for user mistakes; entry points print it without a traceback."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file/line/key and what to do."""


class Preempted(Exception):
    """A stop signal was honoured: a checkpoint is saved and the process should exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
