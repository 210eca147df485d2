"""The one exception type users see: its message names the cause and the fix."""


class LightX2VError(ValueError):
    """A user-facing problem (bad file, wrong model family, missing package).

    ComfyUI shows the message of an exception raised in a node's execute in the UI, so every message
    says what was found and what to do about it.
    """


# ComfyUI labels an error with type(ex).__module__ + "." + its name (execution.py, full_type_name). The pack is
# imported under its folder path, so the real module name reads as a file path in the UI; name the pack instead.
LightX2VError.__module__ = "lightx2v"
