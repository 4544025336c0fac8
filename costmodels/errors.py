"""The one exception type for user mistakes.

Cost models raise :class:`ConfigError` for input a user can fix (an unknown ``model_type``, a
missing config field, a parallel degree that does not divide the heads). Entry points in ``dse``
catch it and print one line, never a traceback. Anything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """Invalid user input; the message names the field and how to fix it."""
