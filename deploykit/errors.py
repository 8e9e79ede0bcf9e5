"""Errors deploykit reports to users as one line, with the exit code the CLI returns."""


class DeployKitError(Exception):
    """A problem with the user's input or environment: what happened and how to fix it.

    The message is one line by construction: line breaks that user text brings in (a
    file name, a YAML key) are shown escaped.
    """

    exit_code = 2

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class GateFailure(DeployKitError):
    """The artifact was built and measured, but missed a quality gate."""

    exit_code = 3


def quoted(value: object, limit: int = 80, plain: bool = False) -> str:
    """A user value as an error message quotes it: its repr (or the text itself, `plain`), at most `limit`
    characters, so a hostile or careless value cannot flood the one-line message."""
    text = str(value) if plain else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"
