"""What a shell makes of ``credd env``: ``eval "$(credd env PROFILE)"``, then a command.

The printed lines go to ``sh`` through a variable (never argv, which ``ps`` shows);
``sh`` evaluates them and execs the command, as a user's shell would run it after
the ``eval``. :func:`exported` reads the same lines the way ``sh`` would.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from tests.support.process import Result, run

#: the variable that carries what ``credd env`` printed into ``sh``
PRINTED = "CREDD_ENV_PRINTED"
#: evaluate what ``credd env`` printed, then run the arguments as a command
EVAL_THEN_EXEC = f'eval "${PRINTED}" && unset {PRINTED} && exec "$@"'


async def run_in_printed_env(
    printed: str, argv: Sequence[str], env: Mapping[str, str], *, unset: Sequence[str] = ()
) -> Result:
    """Run ``argv`` in the environment ``eval`` of ``printed`` leaves (then ``unset``)."""
    changes = [f"--unset={name}" for name in unset]
    command = ["/bin/sh", "-c", EVAL_THEN_EXEC, "sh", "env", *changes, *argv]
    return await run(command, {**env, PRINTED: printed})


def exported(printed: str) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines of ``printed``, unquoted as ``sh`` would."""
    values = {}
    for line in printed.splitlines():
        words = shlex.split(line)
        if words and words[0] == "export":
            for word in words[1:]:
                name, _, value = word.partition("=")
                values[name] = value
    return values


def unset(printed: str) -> list[str]:
    """The names the ``unset`` lines of ``printed`` clear."""
    return [
        name
        for line in printed.splitlines()
        if (words := shlex.split(line)) and words[0] == "unset"
        for name in words[1:]
    ]
