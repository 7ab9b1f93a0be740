"""The one exception type for problems a user can cause and fix."""


class TrtalkError(Exception):
    """A user-fixable problem (bad input, missing file, wrong checkpoint).

    The message is one line and says what to do. The CLI prints it without a
    traceback and exits with status 2.
    """

    exit_code = 2
