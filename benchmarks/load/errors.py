"""One exception tree for chimera-load.

Every failure a user can cause derives from `LoadError`; the CLI prints its message on one line and exits with
its `exit_code`, without a traceback. A message says what is wrong and what to do about it.

    2  ConfigError     the command line or configuration is invalid
    3  EndpointError   the endpoint cannot be used: unreachable, 401/403, not OpenAI-compatible, wrong model
    4  RunAborted      the run started but the server went away (or the user interrupted): partial results
    5  CrossCheckError the server's own token counters disagree with the client's counts
"""

from __future__ import annotations


class LoadError(Exception):
    """Base of every expected failure of chimera-load."""

    exit_code: int = 1


class ConfigError(LoadError):
    """The configuration is invalid (names the field and the fix)."""

    exit_code = 2


class EndpointError(LoadError):
    """The endpoint refused or did not answer like an OpenAI chat-completions server (found at preflight)."""

    exit_code = 3


class RunAborted(LoadError):
    """The run stopped early; what was measured until then is kept and marked partial."""

    exit_code = 4


class CrossCheckError(LoadError):
    """The server's token counters differ from the client's counts (the report names each difference)."""

    exit_code = 5
