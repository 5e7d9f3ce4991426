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

from vmnet.errors import InputError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import ModuleType
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
        return Parsed(_u()._command(prog, path), {}, {}, help_text(prog, path))
    if prog.version is not None and VERSION_NAME in head:
        return Parsed(None, {}, {}, f"{prog.name} {prog.version}")
    s = _scan(prog, argv, strict=True)
    cmd = s.cmd
    if cmd is None:
        raise _u()._missing_command(prog, s.path)
    if cmd.passthrough and s.passthrough is None:
        what = [w for w in _u()._tail(cmd).split() if w != "--"][:1] or ["the arguments"]
        raise UsageError(f"{_u()._cmd_name(prog, cmd)} needs `--` before {what[0]}: "
                         f"{_u()._usage(prog, cmd)}", hint=_see(prog, cmd.path))
    values: dict[str, object] = {}
    pos = s.pos
    k = 0
    for a in cmd.args:
        left = len(pos) - k
        if left <= 0 and a.nargs in (1, "+"):
            raise UsageError(f"missing {a.metavar} (usage: {_u()._usage(prog, cmd)})",
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
        raise UsageError(f"unexpected argument {pos[k]!r} (usage: {_u()._usage(prog, cmd)})",
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
                    raise _u()._unknown_command(prog, s.path, word)
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
                    raise UsageError("`--` before the command",
                                     hint=_u()._commands_hint(prog, s.path))
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
                    raise _u()._unknown_option(prog, s, name)
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
                        raise UsageError(f"{name} needs a value",
                                         hint=_u()._value_hint(prog, s, name, i < n))
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


def _u() -> ModuleType:
    """Error wording, help and completion (vmnet.cli.usage): loaded only when needed."""
    from vmnet.cli import usage

    return usage

def complete_command(target: str) -> Command:
    """The hidden command the completion scripts call: `vmnet __complete SHELL -- WORDS...`."""
    return Command((COMPLETE_COMMAND,), "Print completion candidates, one per line.",
                   args=(Arg("SHELL"),), passthrough=True, target=target, hidden=True,
                   usage_tail="-- WORDS...")


def help_text(prog: Program, path: tuple[str, ...] = ()) -> str:
    """The program's help, or one command's or group's (vmnet.cli.usage)."""
    from vmnet.cli.usage import help_text as text

    return text(prog, path)


def completion_script(prog: Program, shell: str) -> str:
    """The completion script for bash, zsh or fish (vmnet.cli.usage)."""
    from vmnet.cli.usage import completion_script as script

    return script(prog, shell)


def complete(prog: Program, words: Sequence[str], providers: Providers) -> list[str]:
    """Candidates for the last word of `words` (vmnet.cli.usage)."""
    from vmnet.cli.usage import complete as candidates

    return candidates(prog, words, providers)
