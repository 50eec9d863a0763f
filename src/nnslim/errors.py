"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class NnslimError(ValueError):
    """Bad input from the user (a field, value or file), with what is allowed."""


def short_repr(value, limit: int = 80) -> str:
    """repr() cut to `limit` characters: errors must stay one short line whatever the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def first_line(e: BaseException) -> str:
    """'Type: first line of the message' of an exception raised by user code or a library, for one-line errors."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # (torch.export colours its messages)
    if not text:
        return type(e).__name__
    lines = text.splitlines()
    # torch.onnx's exporter opens with generic "next steps"; it names the real cause under "## Exception summary"
    # ("<class 'pkg.Type'>: message") and the model code that raised it under "The following call raised ..."
    if "## Exception summary" in lines:
        after = [line.strip() for line in lines[lines.index("## Exception summary") + 1:] if line.strip()]
        found = re.match(r"<class '(?:[\w.]*\.)?(\w+)'>: (.+)", after[0]) if after else None
        if found:
            where = ""
            if "The following call raised this error:" in after:
                call = after[after.index("The following call raised this error:") + 1:][:2]
                site = re.match(r'File "(?:.*/)?([^/"]+)", line (\d+)', call[0]) if call else None
                if site:
                    where = f" (at {site.group(1)}:{site.group(2)}" + (f": {call[1]})" if len(call) > 1 else ")")
            return f"{found.group(1)}: {found.group(2).strip()}{where}"
    return f"{type(e).__name__}: {lines[0]}"


def bad_value(field: str, value, allowed) -> NnslimError:
    """Build the standard 'field=value is not allowed; allowed: ...' error."""
    hint = ""
    if isinstance(allowed, (list, tuple, set, frozenset)):
        hint = did_you_mean(value, allowed)
        allowed = ", ".join(sorted(str(a) for a in allowed))
    return NnslimError(f"{field}={short_repr(value)} is not allowed;{hint} allowed: {allowed}")


def did_you_mean(value, choices) -> str:
    """' did you mean X?' for the closest choice to a mistyped name, or ''."""
    import difflib

    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" did you mean {close[0]!r}?" if close else ""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so every cleanup handler runs (like Ctrl-C)."""


_terminated = False


def request_termination(signum=None, frame=None) -> None:
    """SIGTERM handler: remember it, then raise. Library code that swallows the exception (a bare
    `except:`) cannot make the run go on: the next checkpoint raises it again and no artifact is committed."""
    global _terminated
    _terminated = True
    raise Terminated()


def termination_requested() -> bool:
    return _terminated


def check_terminated() -> None:
    """Raise Terminated if a SIGTERM arrived, even one that something in between caught and dropped."""
    if _terminated:
        raise Terminated()


def env_choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    """The value of environment variable `name` (default if unset), one of `allowed`, else the standard error."""
    import os

    value = os.environ.get(name, default)
    if value not in allowed:
        raise bad_value(name, value, allowed)
    return value
