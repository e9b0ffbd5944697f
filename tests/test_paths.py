"""credd.files.paths: every location, from HOME, the XDG variables and the AWS variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from credd.files.paths import login_runtime_dir, resolve_paths


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def no_login_runtime() -> Path | None:
    """What :func:`login_runtime_dir` finds on a machine without logind."""
    return None


def test_defaults_from_home_alone(home: Path) -> None:
    paths = resolve_paths({"HOME": str(home)}, login_runtime=no_login_runtime)
    assert paths.home == home
    assert paths.aws_config_file == home / ".aws" / "config"
    assert paths.aws_credentials_file == home / ".aws" / "credentials"
    assert paths.sso_cache_dir == home / ".aws" / "sso" / "cache"
    assert paths.login_cache_dir == home / ".aws" / "login" / "cache"
    assert paths.credd_config_file == home / ".config" / "credd" / "config.toml"
    assert paths.state_dir == home / ".local" / "state" / "credd"
    # without XDG_RUNTIME_DIR the token lives under the state directory
    assert paths.runtime_dir == home / ".local" / "state" / "credd"
    assert paths.default_token_file == home / ".local" / "state" / "credd" / "token"


def test_xdg_config_home(home: Path, tmp_path: Path) -> None:
    paths = resolve_paths({"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert paths.credd_config_file == tmp_path / "cfg" / "credd" / "config.toml"


def test_xdg_state_home_holds_state_and_token_without_runtime_dir(
    home: Path, tmp_path: Path
) -> None:
    paths = resolve_paths(
        {"HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state")},
        login_runtime=no_login_runtime,
    )
    assert paths.state_dir == tmp_path / "state" / "credd"
    assert paths.default_token_file == tmp_path / "state" / "credd" / "token"
    assert paths.lock_dir == tmp_path / "state" / "credd" / "locks"


def test_xdg_runtime_dir_holds_token_and_locks(home: Path, tmp_path: Path) -> None:
    env = {
        "HOME": str(home),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    paths = resolve_paths(env)
    assert paths.default_token_file == tmp_path / "run" / "credd" / "token"
    assert paths.lock_dir == tmp_path / "run" / "credd" / "locks"
    # the state directory (quarantined cache copies) still follows XDG_STATE_HOME
    assert paths.state_dir == tmp_path / "state" / "credd"


def test_xdg_values_with_tilde_are_expanded_against_home(home: Path) -> None:
    env = {"HOME": str(home), "XDG_CONFIG_HOME": "~/cfg", "XDG_STATE_HOME": "~/st"}
    paths = resolve_paths(env)
    assert paths.credd_config_file == home / "cfg" / "credd" / "config.toml"
    assert paths.state_dir == home / "st" / "credd"


def test_empty_variables_count_as_unset(home: Path) -> None:
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": "",
        "XDG_STATE_HOME": "",
        "XDG_RUNTIME_DIR": "",
        "AWS_CONFIG_FILE": "",
        "AWS_SHARED_CREDENTIALS_FILE": "",
        "CREDD_CONFIG": "",
    }
    assert resolve_paths(env) == resolve_paths({"HOME": str(home)})


@pytest.mark.parametrize(
    ("value", "relative"),
    [("~/custom/config", "custom/config"), ("~", "")],
)
def test_aws_config_file_with_tilde(home: Path, value: str, relative: str) -> None:
    paths = resolve_paths({"HOME": str(home), "AWS_CONFIG_FILE": value})
    assert paths.aws_config_file == (home / relative if relative else home)


def test_aws_files_absolute(home: Path, tmp_path: Path) -> None:
    env = {
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(tmp_path / "c"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "k"),
    }
    paths = resolve_paths(env)
    assert paths.aws_config_file == tmp_path / "c"
    assert paths.aws_credentials_file == tmp_path / "k"


def test_aws_shared_credentials_file_with_tilde(home: Path) -> None:
    paths = resolve_paths({"HOME": str(home), "AWS_SHARED_CREDENTIALS_FILE": "~/keys/creds"})
    assert paths.aws_credentials_file == home / "keys" / "creds"


def test_sso_cache_stays_under_home_whatever_aws_config_file(home: Path, tmp_path: Path) -> None:
    # botocore has no override for ~/.aws/sso/cache (protocols.md 6.1)
    paths = resolve_paths({"HOME": str(home), "AWS_CONFIG_FILE": str(tmp_path / "elsewhere")})
    assert paths.sso_cache_dir == home / ".aws" / "sso" / "cache"


def test_login_cache_directory_override(home: Path) -> None:
    paths = resolve_paths({"HOME": str(home), "AWS_LOGIN_CACHE_DIRECTORY": "~/login"})
    assert paths.login_cache_dir == home / "login"


def test_credd_config_precedence(home: Path, tmp_path: Path) -> None:
    xdg = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert resolve_paths(xdg).credd_config_file == tmp_path / "xdg" / "credd" / "config.toml"

    with_env = {**xdg, "CREDD_CONFIG": str(tmp_path / "env.toml")}
    assert resolve_paths(with_env).credd_config_file == tmp_path / "env.toml"

    flag = str(tmp_path / "flag.toml")
    assert resolve_paths(with_env, config_file=flag).credd_config_file == tmp_path / "flag.toml"
    assert resolve_paths(xdg, config_file=flag).credd_config_file == tmp_path / "flag.toml"


def test_credd_config_with_tilde(home: Path) -> None:
    env = {"HOME": str(home), "CREDD_CONFIG": "~/a.toml"}
    assert resolve_paths(env).credd_config_file == home / "a.toml"
    assert resolve_paths(env, config_file="~/b.toml").credd_config_file == home / "b.toml"


def test_locks_stay_out_of_the_aws_directories(home: Path, tmp_path: Path) -> None:
    for env in ({"HOME": str(home)}, {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path)}):
        paths = resolve_paths(env)
        assert not paths.lock_dir.is_relative_to(home / ".aws")


def test_resolving_touches_no_disk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    resolve_paths(
        {
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
        }
    )
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- without XDG_RUNTIME_DIR


def test_without_runtime_dir_a_shell_finds_the_services_runtime_directory(
    home: Path, tmp_path: Path
) -> None:
    """su, cron, ssh without logind: the same token, locks and address as the service."""
    logind = tmp_path / "run" / "user" / "1000"
    service = resolve_paths({"HOME": str(home), "XDG_RUNTIME_DIR": str(logind)})
    for unset in ({"HOME": str(home)}, {"HOME": str(home), "XDG_RUNTIME_DIR": ""}):
        shell = resolve_paths(unset, login_runtime=lambda: logind)
        assert shell.runtime_dir == service.runtime_dir == logind / "credd"
        assert shell.default_token_file == service.default_token_file
        assert shell.lock_dir == service.lock_dir == logind / "credd" / "locks"
        # what outlives a reboot stays where it was
        assert shell.state_dir == home / ".local" / "state" / "credd"


def test_xdg_runtime_dir_wins_and_nothing_is_looked_at(home: Path, tmp_path: Path) -> None:
    def never() -> Path | None:
        raise AssertionError("XDG_RUNTIME_DIR is set: /run/user is not looked at")

    paths = resolve_paths(
        {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "mine")}, login_runtime=never
    )
    assert paths.runtime_dir == tmp_path / "mine" / "credd"


def test_login_runtime_dir_is_the_users_own_0700_directory(tmp_path: Path) -> None:
    uid = os.getuid()
    mine = tmp_path / str(uid)
    mine.mkdir(mode=0o700)
    mine.chmod(0o700)  # whatever the umask
    assert login_runtime_dir(uid, root=tmp_path) == mine


def test_login_runtime_dir_missing(tmp_path: Path) -> None:
    assert login_runtime_dir(os.getuid(), root=tmp_path) is None


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o777, 0o1777, 0o500])
def test_login_runtime_dir_with_another_mode_is_not_trusted(tmp_path: Path, mode: int) -> None:
    uid = os.getuid()
    loose = tmp_path / str(uid)
    loose.mkdir()
    loose.chmod(mode)
    try:
        assert login_runtime_dir(uid, root=tmp_path) is None
    finally:
        loose.chmod(0o700)  # so that pytest can clean up


def test_login_runtime_dir_of_another_owner_is_not_trusted(tmp_path: Path) -> None:
    """A 0700 directory named for a uid but owned by another (here: by us)."""
    other = os.getuid() + 1
    theirs = tmp_path / str(other)
    theirs.mkdir(mode=0o700)
    theirs.chmod(0o700)
    assert theirs.stat().st_uid != other
    assert login_runtime_dir(other, root=tmp_path) is None


def test_login_runtime_dir_that_is_a_symlink_or_a_file_is_not_trusted(tmp_path: Path) -> None:
    uid = os.getuid()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    real.chmod(0o700)
    (tmp_path / str(uid)).symlink_to(real)
    assert login_runtime_dir(uid, root=tmp_path) is None
    (tmp_path / str(uid)).unlink()
    (tmp_path / str(uid)).write_text("")
    (tmp_path / str(uid)).chmod(0o700)
    assert login_runtime_dir(uid, root=tmp_path) is None
