"""Shell words for the commands vmnet prints (`--dry-run`, `-v`, QEMU options)."""

from __future__ import annotations

# shlex.quote's safe set ([\w@%+=:,./-] with re.ASCII), without importing re or shlex
_SHELL_SAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-"
_DROP_SAFE = str.maketrans("", "", _SHELL_SAFE)


def shell_quote(word: str) -> str:
    """One word for a POSIX shell, exactly as shlex.quote writes it."""
    if not word:
        return "''"
    if not word.translate(_DROP_SAFE):  # every character is safe (one C-level pass)
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def command(*words: str) -> str:
    return " ".join(shell_quote(w) for w in words)
