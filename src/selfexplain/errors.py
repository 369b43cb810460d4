"""Errors a user can cause. Each message is one line that names the problem and what to do."""


class SelfExplainError(ValueError):
    """Base class: the CLI prints `error: <message>` and exits with status 2."""


class ModelLoadError(SelfExplainError):
    """A model id, folder or GGUF file could not be loaded."""


class SaeLoadError(SelfExplainError):
    """An SAE release/id, folder or weights file could not be loaded or does not fit the model."""


class InputError(SelfExplainError):
    """A feature list, scale grid, vector file, placeholder or similar argument is invalid."""


class WarehouseError(SelfExplainError):
    """The DuckDB warehouse is locked, corrupt, foreign, or a query was refused."""


def build_validated(cls, values: dict, what: str = "config", *, bare_root: bool = False):
    """`cls(**values)` (None means default) for a pydantic model; its first validation error as
    one InputError line naming the field (`what` when no field is at fault). The one place this
    rule is written: every request and config built at the edge goes through it.

    `bare_root`: an error of the whole model (a model validator's ValueError) is said as its own
    message, without the "invalid <what>: Value error," preamble."""
    from pydantic import ValidationError

    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        if bare_root and not first["loc"]:
            raise InputError(str(first.get("ctx", {}).get("error") or first["msg"])) from None
        message = first["msg"]
        if bare_root:
            message = str(first.get("ctx", {}).get("error") or message)
        where = ".".join(str(p) for p in first["loc"]) or what
        raise InputError(f"invalid {where}: {message}") from None
