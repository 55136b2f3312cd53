"""Errors raised by the converters."""


class ConversionError(ValueError):
    """A source model cannot be converted (a clear one-line reason in the message)."""


class UnsupportedOpsError(ConversionError):
    """The source model uses operators or layers cnnrt has no equivalent for.

    ``unsupported`` lists every offending ``(op_type, node_name)`` pair, so a
    user sees the whole list at once instead of one failure per attempt.
    """

    def __init__(self, source: str, unsupported):
        self.unsupported = list(unsupported)
        kinds = {}
        for op_type, name in self.unsupported:
            kinds.setdefault(op_type, []).append(name)
        parts = [f"{op} ({', '.join(repr(n) for n in names)})" for op, names in sorted(kinds.items())]
        super().__init__(f"unsupported {source} operators: " + "; ".join(parts))
