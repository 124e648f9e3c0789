"""Exceptions by layer. Every user-facing error says what is wrong and how to fix it."""


class CoserveError(Exception):
    """Base of every error coserve raises on purpose."""


class RepositoryError(CoserveError):
    """A model repository (coe.yaml + weight files) is invalid. The message names the
    file, the expert or architecture, and the fix."""


class ConfigError(CoserveError, ValueError):
    """An engine or CLI setting is invalid. The message says which value to change."""


class TraceError(CoserveError):
    """A trace file is malformed. The message names the line."""


class RequestError(CoserveError):
    """A request cannot be served as given (e.g. an unknown component type)."""


class EngineClosedError(RequestError):
    """The engine is not running (not started yet, or closed): nothing is accepted. Not
    the request's fault: a server answers it as unavailable, not as a bad request."""


class ExpertError(CoserveError):
    """An expert failed to load or to run; only the requests that needed it fail."""


class PlanError(ConfigError):
    """A plan file is missing, malformed, or made for another repository. The message
    names the file and the key, and says how to make a good one (`coserve profile`)."""
