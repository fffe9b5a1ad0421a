"""The one fxscale error hierarchy; every class derives from FxscaleError (and so from ValueError).

The command line catches FxscaleError and prints one line on stderr with exit status 2, so every error a user can
cause (bad settings, files, plans, targets) is raised as one of these, with a message naming the culprit.
Older import locations re-export them: `fxscale.export.ExportError`, `fxscale.hw.devprofile.ProfileError`.
"""


class FxscaleError(ValueError):
    """Base class of every fxscale error."""


class TraceError(FxscaleError):
    """A model could not be traced into an FX graph."""


class PlanError(FxscaleError):
    """A scaling plan or scaling setting is invalid for the graph it is applied to (names the plan key)."""


class InfeasibleBudget(PlanError):
    """No assembly of candidates meets a latency (or params) budget; names the budget and the minimum achievable."""


class CandidateError(PlanError):
    """A HANT candidate spec is unknown, malformed, or illegal at a site's shapes (names the spec and the site)."""


class BackendError(FxscaleError):
    """An inference backend cannot be created, is not installed, or cannot compile a partition."""


class VerificationError(FxscaleError):
    """A transformed graph failed verification (names the node and module)."""


class TargetError(FxscaleError):
    """A device target is unknown or missing, its timing protocol is invalid, or it failed to time a model."""


class ProfileError(TargetError):
    """A latency profile is unreadable, of another version, or lacks a kernel kind (names the file / kind)."""


class ExportError(FxscaleError):
    """An ONNX export failed, wrote the wrong opset, or does not match the torch model."""


class LoweringError(FxscaleError):
    """A node that must be lowered for ONNX export cannot be (names the node)."""


class ReportError(FxscaleError):
    """Results, costs or accuracy files for a report are missing or malformed (names the file or entry)."""


__all__ = ["BackendError", "CandidateError", "ExportError", "FxscaleError", "InfeasibleBudget", "LoweringError", "PlanError", "ProfileError",
           "ReportError", "TargetError", "TraceError", "VerificationError"]
