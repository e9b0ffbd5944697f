"""What the tests share, by topic; test modules import from here and never from each other.

- :mod:`tests.support.configs`: the AWS configs and credd tables the tests write, and
  the constants they name (start URL, account, the Sign-In user).
- :mod:`tests.support.home`: :class:`Home`, a private HOME and the variables cleared for it.
- :mod:`tests.support.world`: :class:`World`, the one world a test runs in: the HOME,
  the emulator, its clock and credd's environment.
- :mod:`tests.support.waiting`: :func:`eventually`, the one way to wait for a state.
- :mod:`tests.support.inprocess`: the daemon in the test's own process: logging in
  without a person, asking the endpoint, proving what an SDK gets.
- :mod:`tests.support.process`: the real ``credd`` as subprocesses: the CLI, ``credd
  serve``, and what they leave behind.
- :mod:`tests.support.logs`: capturing what credd logs, as ``credd serve`` renders it.
- :mod:`tests.support.raw_http`: one HTTP exchange over a raw socket, strictly parsed.
- :mod:`tests.support.shells`: a command in the environment ``eval "$(credd env ...)"``
  leaves in a shell, and what those lines export.
- :mod:`tests.support.signin`: AWS Sign-In as the AWS CLI and a user do it (DPoP proofs,
  the browser step, the code exchange) and ``credd login --signin`` in process.
- :mod:`tests.support.systemd`: systemd tools and unit-file reading.
- :mod:`tests.support.old_sdks`: SDKs older than the token file (Debian's botocore and Go
  SDK v2), run in the environment ``credd env`` prints.

Fixtures live in ``tests/conftest.py``; nothing here is a fixture.
"""
