"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class InputError(Exception):
    """Bad input from the user: a file, a line in it, or an option.

    The message must name the file (and line) or the option, so that the user can fix it
    without a traceback. Anything else that escapes is a bug in midalign.
    """
