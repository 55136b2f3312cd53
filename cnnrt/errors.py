"""Exceptions raised by cnnrt."""


class ModelFormatError(ValueError):
    """A model file is not a valid cnnrt model.

    Raised by the reader before any kernel runs.  The message names the
    node (when there is one) and the problem.  It is a ``ValueError`` so
    callers that already catch bad values catch bad files too.
    """
