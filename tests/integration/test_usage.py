"""Usage errors walked over every command and subcommand: with no arguments, with a typo and
with a bad option, the message names the command, shows its usage, suggests the closest
name, and never shows a parser object. In-process (`cli.run` is what `scitq.pyz` calls)."""
from __future__ import annotations

import io
import os

import pytest

from scitq_app.cli import commands, run
from scitq_app.cli.context import parse
from scitq_app.cli.usage import verbs

PARSER_INTERNALS = ("Argument(", "Option(", "unmatched", "Traceback", "DocoptExit")

# Subcommands (and verb-less commands) that are complete with no argument at all: running them
# bare does something (lists, starts a server...), so the walk checks them only with a typo
# and a bad option. test_the_bare_forms_listed_here_are_valid keeps this list true.
COMPLETE_BARE = {("task", "list"), ("task", "counts"), ("batch", "list"), ("worker", "run"),
                 ("worker", "list"), ("worker", "join-token"), ("db", "init"), ("db", "upgrade"),
                 ("db", "status"), ("token", "list"), ("config", "show"), ("server", None),
                 ("dispatcher", None), ("job", "list"), ("recruiter", "list"), ("flavor", "list")}


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    # a server nobody listens on: a walk that wrongly got past the parser fails on exit 3, not 2
    code = run(list(argv), out, err, env={"SCITQ_CONFIG": os.devnull, "SCITQ_SERVER": "http://127.0.0.1:9"})
    return code, out.getvalue(), err.getvalue()


def typo(word: str) -> str:
    """A plausible slip: two inner letters swapped, or a doubled last letter for short words."""
    if len(word) >= 4:
        return word[0] + word[2] + word[1] + word[3:]
    return word + word[-1]


def walk() -> list[tuple[str, str | None]]:
    return [(name, verb) for name, (doc, _) in sorted(commands().items()) for verb in (verbs(doc, name) or [None])]


WALK = walk()
IDS = [f"{c} {v}" if v else c for c, v in WALK]


def assert_usage_error(code: int, out: str, err: str, where: str) -> list[str]:
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert out == ""
    for internal in PARSER_INTERNALS:
        assert internal not in err, err
    assert lines[0].startswith(f"scitq {where}: "), err
    assert lines[1] == "Usage:" and lines[2].lstrip().startswith(f"scitq {where.split()[0]}"), err
    return lines


def test_every_command_has_subcommands_or_is_a_role():
    assert {c for c, v in WALK if v is None} == {"launch", "server", "dispatcher", "provision"}
    assert ("worker", "run") in WALK and ("task", "output") in WALK and ("config", "rclone") in WALK


def mentions(line: str, command: str, verb: str) -> bool:
    """A usage line of `scitq COMMAND VERB`, alone or in a group like `(pause | resume)`."""
    head = line.split("[options]")[0]
    return f"scitq {command} " in head and verb in head.replace("(", " ").replace("|", " ").replace(")", " ").split()


BARE = [(c, v) for c, v in WALK if (c, v) not in COMPLETE_BARE or v is not None]


@pytest.mark.parametrize("command,verb", BARE, ids=[f"{c} {v}" if v else c for c, v in BARE])
def test_no_arguments(command, verb):
    if verb is not None:
        # the group alone lists its subcommands
        lines = assert_usage_error(*call(command), where=command)
        assert lines[0] == f"scitq {command}: a subcommand is required ({', '.join(verbs(commands()[command][0], command))})"
        assert any(mentions(ln, command, verb) for ln in lines[2:]), lines
        if (command, verb) in COMPLETE_BARE:
            return
        lines = assert_usage_error(*call(command, verb), where=f"{command} {verb}")
        assert lines[0] == f"scitq {command} {verb}: missing arguments", lines
        # only this subcommand's usage, then where the options are explained
        assert all(f"scitq {command} " not in ln or mentions(ln, command, verb) for ln in lines[2:-1]), lines
        assert lines[-1] == f"`scitq {command} {verb} --help` explains every option"
    else:
        lines = assert_usage_error(*call(command), where=command)
        assert lines[0] == f"scitq {command}: missing arguments", lines


@pytest.mark.parametrize("command,verb", WALK, ids=IDS)
def test_a_typo(command, verb):
    if verb is None:
        code, out, err = call(typo(command))
        assert code == 2 and out == "", err
        assert err.splitlines() == [f"scitq: unknown command {typo(command)!r} (did you mean `{command}`?); "
                                    "`scitq --help` lists the commands"]
        return
    lines = assert_usage_error(*call(command, typo(verb)), where=command)
    assert lines[0] == f"scitq {command}: unknown subcommand {typo(verb)!r} (did you mean `{verb}`?)", lines
    # the typo is never offered back as a command to run
    assert f"{command} {typo(verb)}" not in "\n".join(lines[1:])


@pytest.mark.parametrize("command,verb", WALK, ids=IDS)
def test_a_bad_option(command, verb):
    where = f"{command} {verb}" if verb else command
    argv = [command] + ([verb] if verb else []) + ["--no-such-option"]
    lines = assert_usage_error(*call(*argv), where=where)
    assert lines[0] == f"scitq {where}: unknown option --no-such-option", lines
    lines = assert_usage_error(*call(*argv[:-1], "-Z"), where=where)
    assert lines[0] == f"scitq {where}: unknown option -Z", lines


def test_a_misspelt_option_gets_a_suggestion_and_a_missing_value_is_named():
    lines = assert_usage_error(*call("task", "list", "--limt", "3"), where="task list")
    assert lines[0] == "scitq task list: unknown option --limt (did you mean `--limit`?)"
    lines = assert_usage_error(*call("task", "list", "--limit"), where="task list")
    assert lines[0] == "scitq task list: --limit needs a value"
    lines = assert_usage_error(*call("task", "show", "1", "2"), where="task show")
    assert lines[0] == "scitq task show: too many or misplaced arguments: show 1 2"


def test_the_bare_forms_listed_here_are_valid():
    table = commands()
    for command, verb in sorted(COMPLETE_BARE, key=str):
        parse(table[command][0], [command] + ([verb] if verb else []))  # no UsageError


def test_bare_scitq_lists_the_commands_and_worker_alone_runs_nothing():
    code, out, err = call()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == "scitq: a command is required" and lines[1] == "Usage:"
    for name in commands():
        assert any(ln.strip().startswith(name + " ") for ln in lines), name
    code, out, err = call("--bogus")
    assert code == 2 and err.splitlines()[0] == "scitq: unknown option --bogus"
    code, out, err = call("worker")  # used to start an agent as root; now its usage
    assert code == 2 and err.splitlines()[0].startswith("scitq worker: a subcommand is required (run, list")


def test_an_invalid_option_value_names_the_option_typed():
    code, out, err = call("--log-level", "chatty", "task", "list")
    assert code == 2 and out == ""
    assert err.splitlines() == ["scitq: log.level (from --log-level): must be one of debug, info, warning, error, "
                                "not 'chatty'"]
