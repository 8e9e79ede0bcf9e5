"""Errors deploykit reports to users as one line, with the exit code the CLI returns."""


class DeployKitError(Exception):
    """A problem with the user's input or environment: what happened and how to fix it."""

    exit_code = 2


class GateFailure(DeployKitError):
    """The artifact was built and measured, but missed a quality gate."""

    exit_code = 3
