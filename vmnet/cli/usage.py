"""The slow half of vmnet's argument parser: error wording, help texts and shell completion.

vmnet.cli.args parses; only a mistake, `--help` or a completion request loads
this module (a VM start never does).
"""

from __future__ import annotations

from vmnet.cli.args import (
    DIRS,
    FILES,
    HELP_NAMES,
    SHELLS,
    VERSION_NAME,
    WIDTH,
    Arg,
    Command,
    Opt,
    Program,
    UsageError,
    _hidden,
    _own_opts,
    _Scan,
    _scan,
    _see,
    _tree,
)
from vmnet.errors import VmnetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from vmnet.cli.args import Providers

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

