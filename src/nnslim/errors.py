"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class NnslimError(ValueError):
    """Bad input from the user (a field, value or file), with what is allowed."""


def short_repr(value, limit: int = 80) -> str:
    """repr() cut to `limit` characters: errors must stay one short line whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def bad_value(field: str, value, allowed) -> NnslimError:
    """Build the standard 'field=value is not allowed; allowed: ...' error."""
    if isinstance(allowed, (list, tuple, set, frozenset)):
        allowed = ", ".join(sorted(str(a) for a in allowed))
    return NnslimError(f"{field}={short_repr(value)} is not allowed; allowed: {allowed}")
