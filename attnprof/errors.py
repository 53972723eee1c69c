"""The one exception type for bad user input; the CLI turns it into one line and exit status 2."""


class UsageError(ValueError):
    """A value given by the user (flag, scenario key, run id, path) is not acceptable.

    The message names the bad value; it is shown to the user as it is.
    """
