"""Shell words for the commands vmnet prints (`--dry-run`, `-v`, QEMU options)."""

from __future__ import annotations

# shlex.quote's safe set ([\w@%+=:,./-] with re.ASCII), without importing re or shlex
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                        "_@%+=:,./-")


def shell_quote(word: str) -> str:
    """One word for a POSIX shell, exactly as shlex.quote writes it."""
    if not word:
        return "''"
    if all(c in _SHELL_SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def command(*words: str) -> str:
    return " ".join(shell_quote(w) for w in words)
