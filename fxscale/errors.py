"""Errors raised by fxscale; all derive from ValueError so callers can catch either."""


class FxscaleError(ValueError):
    """Base class of every fxscale error."""


class TraceError(FxscaleError):
    """A model could not be traced into an FX graph."""


class PlanError(FxscaleError):
    """A scaling plan is invalid for the graph it is applied to (names the plan key)."""


class VerificationError(FxscaleError):
    """A transformed graph failed verification (names the node and module)."""


class TargetError(FxscaleError):
    """A device target is unknown, missing, or failed to time a model."""
