"""The one exception type users see: a message naming what was wrong and what to do."""


class GasbenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""
