"""The one exception type users see: its message names the cause and the fix."""


class LightX2VError(ValueError):
    """A user-facing problem (bad file, wrong model family, missing package).

    ComfyUI shows the message of an exception raised in a node's execute in the UI, so every message
    says what was found and what to do about it.
    """
