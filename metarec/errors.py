"""The one exception type for mistakes a user can cause (the CLI prints it as one line), and the one
way to shorten any other exception to a part of such a line."""


class UserError(Exception):
    """Bad input, bad path, missing data, wrong device: says what is wrong and what to do."""


def first_line(e: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message: a KeyError's key without its repr's quotes, the type's
    name where the message is empty or one word; a line over `limit` characters keeps its first
    sentence (torch's messages go on with advice), then at most `limit` characters (None: the whole line)."""
    text = (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0]
    line = line if " " in line else f"{type(e).__name__} {line}"
    if limit is None or len(line) <= limit:
        return line
    return line.split(". ")[0][:limit]
