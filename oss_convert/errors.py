"""The one exception type that reaches users as a clean `Error: ...` line."""


class OssConvertError(Exception):
    """A problem with the user's input or environment, worded for the user.

    The CLI turns it into a single `Error: ...` line and a non-zero exit; anything
    else escaping is a bug in oss-convert.
    """
