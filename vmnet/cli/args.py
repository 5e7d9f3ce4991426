"""The one argument parser of the vmnet command line, over a declarative table.

`vmnet up VM` must run whole in about 12 ms and `import click` alone costs
29 ms, so every command is parsed here.  The table (Program, Command, Opt,
Arg) is plain data that imports nothing (a command names its function as a
"module:function" string), and `parse` turns argv into values in
microseconds.  This module is on that hot path: builtin modules only at
import time; help, completion and the "did you mean" of errors import what
they need when they run.

The rules (tests/test_args.py has a case for each):
- global options go before or after the command; after it, the command's
  own option of the same name wins (`libvirt attach --config` is attach's);
- `--opt=value` or `--opt value`; a value may not look like an option (write
  `--opt=-x`), negative numbers excepted; flags take no `=value`; an option
  given twice takes the last value (as click and getopt do), unless it is
  "multi" (repeatable, kept in order);
- a word starting with '-' is an option (so `vmnet up -vm1` is an unknown
  option); `--` ends options; for a passthrough command everything after the
  first `--` is kept untouched, and that `--` is required;
- value precedence: flag > environment variable (empty means unset) > default;
- `-h`/`--help` anywhere before `--` is help for the command reached so far,
  even after a mistake; `--version` prints the version;
- errors are UsageError (exit code 2) naming the culprit, with a hint.

`parse` trusts its table; tests/test_args.py's check_table() is the table's check
(reserved or duplicate names, groups with options, positionals out of order).
"""

from __future__ import annotations

from vmnet.errors import InputError, VmnetError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Literal

    Kind = Literal["flag", "value", "multi"]
    Nargs = Literal[1, "?", "*", "+"]
    Completer = Literal["vm", "network", "file", "dir"] | None
    ParseFn = Callable[[str, str], object]
    Providers = Mapping[str, Callable[[], Sequence[str]]]

HELP_NAMES = ("-h", "--help")
VERSION_NAME = "--version"
COMPLETE_COMMAND = "__complete"  # hidden: `vmnet __complete SHELL -- WORDS...`
FILES = "__files__"  # completion markers: the shell completes file or directory names
DIRS = "__dirs__"
SHELLS = ("bash", "zsh", "fish")
WIDTH = 79


class UsageError(InputError):
    """The command line does not fit the table: unknown or repeated option, missing VM..."""

    def one_line(self) -> str:
        return "usage error: " + super().one_line()


class Opt:
    """An option.  kind "flag" is a bool; "value" takes one value; "multi" takes one per
    use, collected in order.  `parse(text, what)` converts a value (`what` is the flag as
    typed, or $ENV) and raises InputError; None keeps the text.  `env` (kind "value"
    only) names an environment variable that supplies the value when the flag is
    absent; `complete` says what shell completion offers for the value.  `dest`
    defaults to the last name, long names last: ("-v", "--verbose") -> "verbose"."""

    __slots__ = ("choices", "complete", "default", "dest", "env", "help", "kind", "metavar",
                 "names", "parse")

    def __init__(self, *names: str, dest: str | None = None, kind: Kind = "flag",
                 parse: ParseFn | None = None, metavar: str | None = None, help: str = "",
                 default: object = None, env: str | None = None,
                 choices: tuple[str, ...] | None = None, complete: Completer = None) -> None:
        if not names or kind not in ("flag", "value", "multi") or (env and kind != "value"):
            raise ValueError(f"option {names}: bad kind {kind!r} or env")
        self.names = names
        self.dest = dest or names[-1].lstrip("-").replace("-", "_")  # ("-v", "--verbose")
        self.kind = kind
        self.parse = parse
        self.metavar = metavar
        self.help = help
        self.default = False if kind == "flag" and default is None else default
        self.env = env
        self.choices = choices
        self.complete = complete


class Arg:
    """A positional: nargs 1 (required), "?" (optional, None), "*" or "+" (a list; last)."""

    __slots__ = ("complete", "dest", "help", "metavar", "nargs")

    def __init__(self, metavar: str, *, dest: str | None = None, nargs: Nargs = 1,
                 help: str = "", complete: Completer = None) -> None:
        self.metavar = metavar
        self.dest = dest or metavar.lower().replace("-", "_")
        self.nargs = nargs
        self.help = help
        self.complete = complete


class Command:
    """One command (path ("up",) or ("hook", "install"); a str is split at spaces).  A
    path that prefixes others is a group: declare it only to give the group its help.
    A passthrough command keeps everything after the first `--` in
    values["passthrough"].  `target` is "module:function", so the table imports
    nothing."""

    __slots__ = ("_by_name", "args", "help", "hidden", "opts", "passthrough", "path", "target",
                 "usage_tail")

    def __init__(self, path: str | tuple[str, ...], help: str = "", *,
                 opts: tuple[Opt, ...] = (), args: tuple[Arg, ...] = (),
                 passthrough: bool = False, target: str = "", usage_tail: str | None = None,
                 hidden: bool = False) -> None:
        self.path = tuple(path.split()) if isinstance(path, str) else path
        self.help = help
        self.opts = opts
        self.args = args
        self.passthrough = passthrough
        self.target = target
        self.usage_tail = usage_tail
        self.hidden = hidden
        self._by_name: dict[str, Opt] | None = None


class Program:
    """The whole command line: global options (valid before and after any command)."""

    __slots__ = ("_by_name", "_tree", "commands", "exit_codes_help", "globals", "help", "name",
                 "version")

    def __init__(self, name: str, help: str = "", *, globals: tuple[Opt, ...] = (),
                 commands: tuple[Command, ...] = (), version: str | None = None,
                 exit_codes_help: str = "") -> None:
        self.name = name
        self.help = help
        self.globals = globals
        self.commands = commands
        self.version = version
        self.exit_codes_help = exit_codes_help
        self._by_name: dict[str, Opt] | None = None
        # group path (the program itself is ()) -> its words -> the Command each names
        # (None: a group nobody declared); a word is a group if its path is a key too
        self._tree: dict[tuple[str, ...], dict[str, Command | None]] | None = None


class Parsed:
    """What argv asked for.  `help` set: print it and exit 0 (nothing else is filled)."""

    __slots__ = ("command", "globals", "help", "values")

    def __init__(self, command: Command | None, values: dict[str, object],
                 globals: dict[str, object], help: str | None = None) -> None:
        self.command = command
        self.values = values
        self.globals = globals
        self.help = help


class _Scan:
    """Where a walk over argv got to."""

    __slots__ = ("cmd", "cvals", "dead", "gvals", "opts_done", "passthrough", "path",
                 "pending", "pos")

    def __init__(self) -> None:
        self.path: tuple[str, ...] = ()  # the words of the command (or group) reached
        self.cmd: Command | None = None
        self.gvals: dict[str, object] = {}
        self.cvals: dict[str, object] = {}
        self.pos: list[str] = []
        self.opts_done = False
        self.passthrough: list[str] | None = None
        self.pending: Opt | None = None  # a value option at the end, still without value
        self.dead = False  # tolerant walk hit an unknown command or a misplaced `--`


def _tree(prog: Program) -> dict[tuple[str, ...], dict[str, Command | None]]:
    tree = prog._tree
    if tree is None:
        tree = {(): {}}
        for cmd in prog.commands:
            for k in range(len(cmd.path)):
                kids = tree.setdefault(cmd.path[:k], {})
                kids.setdefault(cmd.path[k], None)
            tree[cmd.path[:-1]][cmd.path[-1]] = cmd
        prog._tree = tree
    return tree


def _names(opts: tuple[Opt, ...]) -> dict[str, Opt]:
    return {name: opt for opt in opts for name in opt.names}


def _global_opts(prog: Program) -> dict[str, Opt]:
    if prog._by_name is None:
        prog._by_name = _names(prog.globals)
    return prog._by_name


def _own_opts(cmd: Command | None) -> dict[str, Opt]:
    if cmd is None:
        return {}
    if cmd._by_name is None:
        cmd._by_name = _names(cmd.opts)
    return cmd._by_name


def _hidden(prog: Program, path: tuple[str, ...]) -> bool:
    kids = _tree(prog).get(path)
    if kids is None:
        cmd = _tree(prog)[path[:-1]][path[-1]]
        return cmd is not None and cmd.hidden
    return all(_hidden(prog, (*path, w)) for w in kids)


def _optlike(word: str) -> bool:
    """Whether a word is an option rather than a value ("-1" and "-" are values)."""
    return word[:1] == "-" and word != "-" and not word[1:2].isdigit()


def _see(prog: Program, path: tuple[str, ...]) -> str:
    return f"see `{' '.join((prog.name, *path, '--help'))}`"


def parse(prog: Program, argv: Sequence[str], env: Mapping[str, str]) -> Parsed:
    """Turn argv (without the program name) into the command and its values; raise
    UsageError (or the InputError of an option's parse function)."""
    try:
        head = argv[:list(argv).index("--")]
    except ValueError:
        head = argv
    if "-h" in head or "--help" in head:
        upto = min(list(head).index(h) for h in HELP_NAMES if h in head)
        path = _scan(prog, head[:upto], strict=False).path
        return Parsed(_command(prog, path), {}, {}, help_text(prog, path))
    if prog.version is not None and VERSION_NAME in head:
        return Parsed(None, {}, {}, f"{prog.name} {prog.version}")
    s = _scan(prog, argv, strict=True)
    cmd = s.cmd
    if cmd is None:
        raise _missing_command(prog, s.path)
    if cmd.passthrough and s.passthrough is None:
        what = [w for w in _tail(cmd).split() if w != "--"][:1] or ["the arguments"]
        raise UsageError(f"{_cmd_name(prog, cmd)} needs `--` before {what[0]}: "
                         f"{_usage(prog, cmd)}", hint=_see(prog, cmd.path))
    values: dict[str, object] = {}
    pos = s.pos
    k = 0
    for a in cmd.args:
        left = len(pos) - k
        if left <= 0 and a.nargs in (1, "+"):
            raise UsageError(f"missing {a.metavar} (usage: {_usage(prog, cmd)})",
                             hint=_see(prog, cmd.path))
        if a.nargs == 1:
            values[a.dest] = pos[k]
            k += 1
        elif a.nargs == "?":
            values[a.dest] = pos[k] if left > 0 else None
            k += 1 if left > 0 else 0
        else:
            values[a.dest] = pos[k:]
            k = len(pos)
    if k < len(pos):
        raise UsageError(f"unexpected argument {pos[k]!r} (usage: {_usage(prog, cmd)})",
                         hint=_see(prog, cmd.path))
    if cmd.passthrough:
        values["passthrough"] = s.passthrough
    _fill(prog, cmd, cmd.opts, s.cvals, env)
    values.update(s.cvals)
    _fill(prog, cmd, prog.globals, s.gvals, env)
    return Parsed(cmd, values, s.gvals)


def _fill(prog: Program, cmd: Command, opts: tuple[Opt, ...], vals: dict[str, object],
          env: Mapping[str, str]) -> None:
    """Fill in what argv did not give: from the environment, else the default."""
    for opt in opts:
        if opt.dest in vals:
            continue
        name = opt.env
        text = env.get(name) if name else None
        if text and name:
            vals[opt.dest] = _convert(prog, cmd.path, opt, text, "$" + name)
        elif opt.kind == "multi":
            default = opt.default
            vals[opt.dest] = list(default) if isinstance(default, (tuple, list)) else []
        else:
            vals[opt.dest] = opt.default


def _convert(prog: Program, path: tuple[str, ...], opt: Opt, text: str, what: str) -> object:
    if opt.choices is not None and text not in opt.choices:
        raise UsageError(f"{what} must be one of {', '.join(opt.choices)} (got {text!r})",
                         hint=_see(prog, path))
    return text if opt.parse is None else opt.parse(text, what)


def _scan(prog: Program, argv: Sequence[str], strict: bool) -> _Scan:
    """Walk argv: strict (parse: raise at the first mistake, convert values) or tolerant
    (help and completion: skip mistakes, keep texts, stop at an unknown command)."""
    s = _Scan()
    tree = _tree(prog)
    gopts = _global_opts(prog)
    copts: dict[str, Opt] = {}
    n = len(argv)
    i = 0
    while i < n:
        word = argv[i]
        i += 1
        if s.opts_done or word[:1] != "-" or word == "-":
            if s.cmd is not None:
                s.pos.append(word)
                continue
            kids = tree[s.path]
            if word not in kids:
                if strict:
                    raise _unknown_command(prog, s.path, word)
                s.dead = True
                break
            s.path = (*s.path, word)
            if s.path not in tree:
                s.cmd = kids[word]
                copts = _own_opts(s.cmd)
            continue
        if word == "--":
            if s.cmd is None:
                if strict:
                    raise UsageError("`--` before the command", hint=_commands_hint(prog, s.path))
                s.dead = True
                break
            if s.cmd.passthrough:
                s.passthrough = list(argv[i:])
                break
            s.opts_done = True
            continue
        name, eq, text = word.partition("=") if word[:2] == "--" else (word, "", "")
        vals = s.cvals
        opt = copts.get(name)
        if opt is None:
            vals = s.gvals
            opt = gopts.get(name)
            if opt is None:
                if strict:
                    raise _unknown_option(prog, s, name)
                continue
        value: object = True
        if opt.kind == "flag":
            if eq and strict:
                raise UsageError(f"{name} takes no value (got {word!r})",
                                 hint=_see(prog, s.path))
        else:
            if not eq:
                if i >= n or _optlike(argv[i]):
                    if strict:
                        raise UsageError(f"{name} needs a value", hint=_value_hint(prog, s, name,
                                                                               i < n))
                    s.pending = opt if i >= n else None
                    continue
                text = argv[i]
                i += 1
            value = _convert(prog, s.path, opt, text, name) if strict else text
        if opt.kind == "multi":
            had = vals.get(opt.dest)
            if isinstance(had, list):
                had.append(value)
            else:
                vals[opt.dest] = [value]
        else:
            vals[opt.dest] = value  # given again: the last one wins (as click and getopt do)
    return s


# -- errors (their imports are lazy: only a mistake pays for them) -------------------------
def _cmd_name(prog: Program, cmd: Command) -> str:
    return " ".join((prog.name, *cmd.path))


def _close(word: str, candidates: Sequence[str], cutoff: float = 0.7) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


def _command(prog: Program, path: tuple[str, ...]) -> Command | None:
    return _tree(prog)[path[:-1]][path[-1]] if path else None


def _visible(prog: Program, path: tuple[str, ...]) -> list[str]:
    """The words that may follow a group path, in table order, hidden commands left out."""
    return [w for w in _tree(prog)[path] if not _hidden(prog, (*path, w))]


def _commands_hint(prog: Program, path: tuple[str, ...]) -> str:
    where = " ".join((prog.name, *path))
    return f"{where} commands: {', '.join(_visible(prog, path))}; {_see(prog, path)}"


def _missing_command(prog: Program, path: tuple[str, ...]) -> UsageError:
    if not path:
        return UsageError("missing command", hint=_commands_hint(prog, path))
    where = " ".join((prog.name, *path))
    return UsageError(f"{where} needs a command: {', '.join(_visible(prog, path))}",
                      hint=_see(prog, path))


def _unknown_command(prog: Program, path: tuple[str, ...], word: str) -> UsageError:
    msg = f"unknown command {' '.join((*path, word))!r}"
    guess = _close(word, _visible(prog, path), 0.6)
    if guess is not None:
        msg += f"; did you mean {' '.join((*path, guess))!r}?"
    return UsageError(msg, hint=_commands_hint(prog, path))


def _valid_opts(prog: Program, s: _Scan) -> list[tuple[Opt, dict[str, object]]]:
    """The options valid at this point with the values they land in: the command's own
    first, then the globals it does not shadow."""
    own = _own_opts(s.cmd)
    found = [(opt, s.cvals) for opt in (s.cmd.opts if s.cmd else ())]
    found += [(g, s.gvals) for g in prog.globals if not any(n in own for n in g.names)]
    return found


def _unknown_option(prog: Program, s: _Scan, name: str) -> UsageError:
    names = [n for opt, _ in _valid_opts(prog, s) for n in opt.names] + list(HELP_NAMES)
    if prog.version is not None:
        names.append(VERSION_NAME)
    hints = []
    if name[:2] == "--":
        guess = _close(name, names)
    else:  # -dry-run for --dry-run; but -vm1 is most likely a VM name
        guess = _close("-" + name, [n for n in names if n[:2] == "--"], 0.8)
        arg = _next_arg(s.cmd, len(s.pos)) if s.cmd is not None else None
        if arg is not None and guess is None:
            hints.append(f"{arg.metavar} names may not start with '-': such a word is read "
                         "as an option")
    msg = f"unknown option {name}" + (f"; did you mean {guess}?" if guess else "")
    if s.cmd is None:
        owners = [_cmd_name(prog, c) for c in prog.commands
                  if not c.hidden and any(name in o.names for o in c.opts)]
        if owners:
            hints.append(f"{name} is an option of {', '.join(owners)}: put it after the command")
    hints.append(_see(prog, s.path))
    return UsageError(msg, hint="; ".join(hints))


def _value_hint(prog: Program, s: _Scan, name: str, followed: bool) -> str:
    see = _see(prog, s.path)
    return f"write {name}=VALUE for a value that starts with '-'; {see}" if followed else see


def _next_arg(cmd: Command | None, given: int) -> Arg | None:
    """The positional the next word would fill."""
    for k, a in enumerate(cmd.args if cmd else ()):
        if k >= given or a.nargs in ("*", "+"):
            return a
    return None


# -- help -----------------------------------------------------------------------------------
def _tail(cmd: Command) -> str:
    return cmd.usage_tail or ("-- ARGS..." if cmd.passthrough else "")


def _usage(prog: Program, cmd: Command) -> str:
    parts = [prog.name, *cmd.path, "[OPTIONS]"]
    for a in cmd.args:
        parts.append({1: a.metavar, "?": f"[{a.metavar}]", "*": f"[{a.metavar}]...",
                      "+": f"{a.metavar}..."}[a.nargs])
    if _tail(cmd):
        parts.append(_tail(cmd))
    return " ".join(parts)


def _wrap(text: str, indent: str = "", first: str = "") -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False) or [first.rstrip()]


def _paragraphs(text: str) -> list[str]:
    """A docstring-style text, rewrapped; indented blocks (examples) are kept as they are."""
    lines = text.expandtabs().strip("\n").splitlines()
    if not lines:
        return []
    margins = [len(ln) - len(ln.lstrip()) for ln in lines[1:] if ln.strip()]
    cut = min(margins, default=0)
    lines = [lines[0].strip()] + [ln[cut:].rstrip() for ln in lines[1:]]
    out: list[str] = []
    block: list[str] = []
    for ln in [*lines, ""]:
        if ln:
            block.append(ln)
            continue
        if block:
            if out:
                out.append("")
            if any(b[:1] == " " for b in block):
                out.extend(block)
            else:
                out.extend(_wrap(" ".join(block)))
        block = []
    return out


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    """Two columns: "  term  description", the description wrapped beside the terms."""
    col = min(max((len(t) for t, _ in rows), default=0), 24) + 4
    out: list[str] = []
    for term, desc in rows:
        head = "  " + term
        if not desc:
            out.append(head)
        elif len(head) + 2 <= col:
            out.extend(_wrap(desc, " " * col, head.ljust(col)))
        else:
            out.append(head)
            out.extend(_wrap(desc, " " * col))
    return out


def _shown(value: object) -> str:
    if value is None or isinstance(value, bool) or value in ("", (), []):
        return ""
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _metavar(opt: Opt) -> str:
    if opt.metavar:
        return opt.metavar
    if opt.choices:
        return "|".join(opt.choices)
    return opt.dest.upper()


def _opt_row(opt: Opt) -> tuple[str, str]:
    term = ", ".join(opt.names) + ("" if opt.kind == "flag" else " " + _metavar(opt))
    notes = []
    if opt.choices and opt.metavar:
        notes.append("one of: " + ", ".join(opt.choices))
    if opt.kind == "multi":
        notes.append("repeatable")
    if _shown(opt.default):
        notes.append("default: " + _shown(opt.default))
    if opt.env:
        notes.append("env: " + opt.env)
    extra = f"[{'; '.join(notes)}]" if notes else ""
    return term, " ".join(t for t in (opt.help, extra) if t)


def _leaves(prog: Program, path: tuple[str, ...]) -> list[Command]:
    kids = _tree(prog).get(path)
    if kids is None:
        cmd = _command(prog, path)
        return [cmd] if cmd is not None and not cmd.hidden else []
    return [c for w in kids for c in _leaves(prog, (*path, w))]


def _summary(cmd: Command) -> str:
    return cmd.help.strip().split("\n", 1)[0].strip()


def _commands_rows(prog: Program, path: tuple[str, ...]) -> list[str]:
    return _rows([(" ".join(c.path[len(path):]), _summary(c)) for c in _leaves(prog, path)])


def help_text(prog: Program, path: tuple[str, ...] = ()) -> str:
    """The program's help (commands, global options, exit codes), a group's or one
    command's (usage, arguments, options with metavars, defaults and env), at 79 columns."""
    tree = _tree(prog)
    for k, word in enumerate(path):
        if word not in tree.get(path[:k], ()):
            raise _unknown_command(prog, path[:k], word)
    cmd = _command(prog, path)
    if path in tree or cmd is None:
        return _group_help(prog, path)
    return _command_help(prog, cmd)


def _group_help(prog: Program, path: tuple[str, ...]) -> str:
    where = " ".join((prog.name, *path))
    out = [f"usage: {where} [OPTIONS] COMMAND [ARGS]...", ""]
    group = _command(prog, path)
    text = group.help if group is not None else "" if path else prog.help
    if text:
        out += [*_paragraphs(text), ""]
    out += ["Commands:", *_commands_rows(prog, path), ""]
    if not path:
        rows = [_opt_row(g) for g in prog.globals]
        rows.append((", ".join(HELP_NAMES), "Show this help and exit."))
        if prog.version is not None:
            rows.append((VERSION_NAME, "Show the version and exit."))
        out += ["Options:", *_rows(rows), ""]
        if prog.exit_codes_help.strip():
            codes = [ln.strip().partition("  ") for ln in prog.exit_codes_help.splitlines()]
            out += ["Exit codes:", *_rows([(c[0], c[2].strip()) for c in codes if c[0]]), ""]
        out += _wrap(f"Run `{where} COMMAND --help` for the options of one command; the "
                     "options above also work after the command.")
    else:
        out += _wrap(f"Run `{where} COMMAND --help` for the options of one command.")
    return "\n".join(out) + "\n"


def _command_help(prog: Program, cmd: Command) -> str:
    out = [*_wrap(_usage(prog, cmd), " " * 7, "usage: "), ""]
    if cmd.help.strip():
        out += [*_paragraphs(cmd.help), ""]
    if any(a.help for a in cmd.args):
        out += ["Arguments:", *_rows([(a.metavar, a.help) for a in cmd.args]), ""]
    rows = [_opt_row(o) for o in cmd.opts] + [(", ".join(HELP_NAMES), "Show this help and exit.")]
    out += ["Options:", *_rows(rows), ""]
    own = _own_opts(cmd)
    free = [g for g in prog.globals if not any(n in own for n in g.names)]
    shadowed = [g for g in prog.globals if g not in free]
    words = ", ".join("/".join(g.names) + ("" if g.kind == "flag" else " " + _metavar(g))
                      for g in free)
    if words:
        text = f"Global options, before or after the command: {words}"
        for g in shadowed:
            names = "/".join(n for n in g.names if n in own)
            text += f"; global {names} only before the command (after it, {names} is this " \
                    "command's own)"
        out += _wrap(f"{text}; `{prog.name} --help` describes them.")
    return "\n".join(out) + "\n"


# -- completion -----------------------------------------------------------------------------
def complete(prog: Program, words: Sequence[str], providers: Providers) -> list[str]:
    """Candidates for the last of `words` (words[0] is the program name): commands,
    options valid there (globals too), option values (choices, or providers["vm"]() /
    providers["network"]()), positionals; FILES or DIRS alone: the shell completes paths."""
    if len(words) < 2:
        return []
    cur = words[-1]
    s = _scan(prog, words[1:-1], strict=False)
    if s.dead:
        return []
    if s.passthrough is not None:
        return [FILES]
    if s.pending is not None:
        return _values(s.pending, cur, providers)
    if cur[:1] == "-" and not s.opts_done:
        if cur[:2] == "--" and "=" in cur:
            name, _, part = cur.partition("=")
            opt = next((o for o, _ in _valid_opts(prog, s) if name in o.names), None)
            if opt is None or opt.kind == "flag":
                return []
            found = _values(opt, part, providers)
            return found if found in ([FILES], [DIRS]) else [f"{name}={v}" for v in found]
        return [n for n in _option_names(prog, s) if n.startswith(cur)]
    if s.cmd is None:
        return [w for w in _visible(prog, s.path) if w.startswith(cur)]
    arg = _next_arg(s.cmd, len(s.pos))
    if arg is None:
        return _option_names(prog, s) if not cur else []
    return _provided(arg.complete, cur, providers)


def _option_names(prog: Program, s: _Scan) -> list[str]:
    """Options not given yet (a multi one may come again), then --help."""
    names = [n for opt, vals in _valid_opts(prog, s)
             if opt.kind == "multi" or opt.dest not in vals for n in opt.names]
    if prog.version is not None and s.cmd is None:
        names.append(VERSION_NAME)
    return [*names, *HELP_NAMES]


def _values(opt: Opt, part: str, providers: Providers) -> list[str]:
    if opt.choices:
        return [c for c in opt.choices if c.startswith(part)]
    return _provided(opt.complete, part, providers)


def _provided(kind: str | None, part: str, providers: Providers) -> list[str]:
    if kind == "file":
        return [FILES]
    if kind == "dir":
        return [DIRS]
    get = providers.get(kind) if kind else None
    if get is None:
        return []
    try:
        found = get()
    except (VmnetError, OSError):  # no state directory yet, unreadable config...
        return []
    return sorted({w for w in found if w.startswith(part)})


def complete_command(target: str) -> Command:
    """The hidden command the completion scripts call: `vmnet __complete SHELL -- WORDS...`."""
    return Command((COMPLETE_COMMAND,), "Print completion candidates, one per line.",
                   args=(Arg("SHELL"),), passthrough=True, target=target, hidden=True,
                   usage_tail="-- WORDS...")


_BASH = r"""# bash completion for %PROG%: source <(%PROG% completion bash)
%FUNC%() {
    local cur=${COMP_WORDS[COMP_CWORD]} n=$COMP_CWORD
    # bash splits --opt=value at '=' (COMP_WORDBREAKS): ask about --opt, then the value
    if [[ $cur == "=" ]]; then
        cur=""
    elif (( n > 1 )) && [[ ${COMP_WORDS[n-1]} == "=" ]]; then
        n=$((n - 1))
    fi
    local -a cands=()
    mapfile -t cands < <(%PROG% __complete bash -- "${COMP_WORDS[@]:0:n}" "$cur" 2>/dev/null)
    case ${cands[0]-} in
        __files__)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        __dirs__)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur") ;;
        *)
            COMPREPLY=("${cands[@]}") ;;
    esac
}
complete -F %FUNC% %PROG%
"""

_ZSH = r"""#compdef %PROG%
# zsh completion for %PROG%: source <(%PROG% completion zsh), or save it as _%PROG%
# in a directory of $fpath
%FUNC%() {
    local -a cands
    cands=("${(@f)$(%PROG% __complete zsh -- "${(@)words[1,CURRENT-1]}" "$PREFIX" 2>/dev/null)}")
    cands=(${cands:#})
    case ${cands[1]-} in
        (__files__)
            [[ $PREFIX == -* ]] && compset -P '*='
            _files ;;
        (__dirs__)
            [[ $PREFIX == -* ]] && compset -P '*='
            _files -/ ;;
        (*)
            (( $#cands )) && compadd -a cands ;;
    esac
}
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    %FUNC% "$@"
else
    compdef %FUNC% %PROG%
fi
"""

_FISH = r"""# fish completion for %PROG%: %PROG% completion fish | source
function %FUNC%
    set -l tok (commandline -ct)
    set -l cands (%PROG% __complete fish -- (commandline -opc) "$tok" 2>/dev/null)
    switch "$cands[1]"
        case __files__ __dirs__
            set -l pre (string match -r -- '^-[^=]*=' "$tok")
            set -l rest (string replace -r -- '^-[^=]*=' '' "$tok")
            if test "$cands[1]" = __files__
                __fish_complete_path "$rest" | string replace -r -- '^' "$pre"
            else
                __fish_complete_directories "$rest" | string replace -r -- '^' "$pre"
            end
        case '*'
            for c in $cands
                printf '%s\n' $c
            end
    end
end
complete -c %PROG% -f -a '(%FUNC%)'
"""


def completion_script(prog: Program, shell: str) -> str:
    """The completion script for bash, zsh or fish; it asks `PROG __complete SHELL -- WORDS`."""
    scripts = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}
    if shell not in scripts:
        raise UsageError(f"no completion for shell {shell!r}; one of: {', '.join(SHELLS)}")
    func = "_" + "".join(ch if ch.isalnum() else "_" for ch in prog.name) + "_complete"
    return scripts[shell].replace("%FUNC%", func).replace("%PROG%", prog.name)

