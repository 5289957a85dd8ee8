"""The one exception type a user can cause.

Every error a user can trigger (a wrong file, a missing sequence, a shape
mismatch, a corrupt bundle) is raised as :class:`BiglError` with a message that
names the file (when there is one), what is wrong, and the fix. The CLI prints
it without a traceback and exits non-zero; the napari widget shows it as a
notification.
"""


class BiglError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""


class InputWarning(UserWarning):
    """The input can be processed but probably not well (anisotropic, oblique, not skull-stripped); says the fix."""
