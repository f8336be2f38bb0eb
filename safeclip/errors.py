"""The errors a user can act on: one base class, so the UI and the CLI turn each into one
readable line (``gr.Error`` in the app, ``safeclip VERB: error: ...`` on the command line).

    StudioError               anything the user can fix; never a bug
    ├── InputError            a value outside its limits, an unreadable image, a bad file
    │   ├── ImageError        (safeclip.images) corrupt, empty or huge images
    │   └── GalleryMismatchError  (safeclip.retrieval.store) an index of other models
    ├── ModelUnavailableError a model that is neither on disk nor downloadable
    └── NotReadyError         a capability still being prepared (e.g. the default gallery)

Everything else that escapes is a bug: the app logs its traceback and keeps serving.
"""
from __future__ import annotations


class StudioError(Exception):
    """Base of the errors whose message tells the user what to do."""


class InputError(StudioError, ValueError):
    """A user input (a number, a text, an image, a file) the owner of its limits refuses."""


class ModelUnavailableError(StudioError, RuntimeError):
    """A model is neither on disk nor downloadable; the message names the role, the path or id
    and the override that points at a copy."""


class NotReadyError(StudioError, RuntimeError):
    """A capability that is being prepared in the background; the message says how far it is."""
