"""Loading the configuration: credd's TOML and the AWS config, joined into :class:`Settings`.

The two readers know nothing of each other; this is where a ``[profiles.NAME]``
of credd's TOML is checked against the AWS config it names (its signer, its
subject session, a name both files claim) and the result is frozen. This is
the edge where untyped text becomes data: nothing past it sees a
``dict[str, Any]``.
"""

from __future__ import annotations

from dataclasses import replace

from credd.config.aws_profiles import AwsConfig, ProfileBuilder
from credd.config.credd_toml import CreddToml, TrustedIdentityTable, read_credd_toml
from credd.config.ini import read_ini
from credd.config.settings import Settings
from credd.files.paths import Paths


def _link_trusted(
    trusted: TrustedIdentityTable, builder: ProfileBuilder, credd: CreddToml, paths: Paths
) -> None:
    """Check what a ``[profiles.NAME]`` names in the AWS config, and add it to the builder."""
    spec, table, aws = trusted.spec, trusted.table, builder.aws
    name = spec.name
    if name in aws.names() or name in aws.sso_sessions or name in builder.sessions:
        raise credd.profiles_table.error(
            name, f"{name!r} is also a name in {paths.aws_config_file}; pick another name"
        )
    subject = spec.subject_session
    known = subject is None or subject in credd.trusted or builder.sso_session(subject)
    if not known:
        raise table.error(
            "subject_session",
            f"{subject!r} is neither an [sso-session] of {paths.aws_config_file} "
            "nor a [profiles.NAME] of this file",
        )
    source = spec.source_profile
    endpoint_profile = None
    if source is not None:
        other = credd.trusted.get(source)
        if source not in aws.names() and other is None:
            raise table.error(
                "source_profile",
                f"{source!r} is not a profile of {paths.aws_config_file}, "
                f"{paths.aws_credentials_file} or this file",
            )
        if other is not None and other.profile is None:
            raise table.error(
                "source_profile",
                f"[profiles.{source}] has no role_arn: it serves a bearer token, not credentials",
            )
        if source in aws.profiles:
            endpoint_profile = source  # its [services] endpoint_url applies
    builder.trusted[name] = replace(spec, endpoint_profile=endpoint_profile)
    if trusted.profile is not None:
        builder.profiles[name] = replace(trusted.profile, endpoint_profile=endpoint_profile)


def load_settings(paths: Paths) -> Settings:
    """Read both configuration files; raises :class:`ConfigError` on malformed input."""
    credd = read_credd_toml(paths)
    aws = AwsConfig(read_ini(paths.aws_config_file), read_ini(paths.aws_credentials_file))
    builder = ProfileBuilder(aws)
    builder.classify()
    for trusted in credd.trusted.values():
        _link_trusted(trusted, builder, credd, paths)
    builder.drop_broken_chains()
    unserved = dict(builder.unserved)
    for name in sorted(credd.refresh.prefetch):
        if name not in builder.profiles:
            raise credd.refresh_table.error("prefetch", f"{name!r} is not a profile credd serves")
    return Settings(
        paths=paths,
        server=credd.server,
        containers=credd.containers,
        refresh=credd.refresh,
        log=credd.log,
        sessions={**builder.sessions, **builder.signin, **builder.trusted},
        profiles=builder.profiles,
        sources=builder.sources,
        unserved=unserved,
    )
