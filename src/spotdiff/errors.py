"""The one error type for problems a user can cause (bad input, bad params, missing files).

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug and keeps
its traceback.
"""


class SpotdiffError(Exception):
    """A user-caused problem. The message names the input and says what to do about it."""
