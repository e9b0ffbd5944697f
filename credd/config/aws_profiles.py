"""The AWS config and credentials files, classified: which profiles credd serves.

Each profile is served (an Identity Center role, a role chained by
AssumeRole, an ``aws login`` profile), is a source that only signs for
others (static keys, ``credential_process``), or cannot be served. The last
is not an error: the profile lands in ``unserved`` with the reason, and
``credd status`` shows it while every other profile keeps working. Only a
malformed value raises :class:`ConfigError`, naming the file, line and key.
"""

from __future__ import annotations

from credd.config.formats import ACCOUNT_ID, ROLE_ARN, SESSION_NAME, WHOLE_NUMBER
from credd.config.ini import IniFile, Section
from credd.config.settings import (
    DEFAULT_SCOPES,
    DEFAULT_SIGNIN_REGION,
    AssumeRoleProfile,
    IdentityEnhancedProfile,
    ProcessProfile,
    ServedProfile,
    SigningSource,
    SigninProfile,
    SigninSessionSpec,
    SsoRoleProfile,
    SsoSessionSpec,
    StaticKeysProfile,
    TrustedIdentitySpec,
)
from credd.errors import ConfigError
from credd.secret import Secret


class AwsConfig:
    """The AWS config and credentials files, read as botocore reads them."""

    def __init__(self, config: IniFile | None, credentials: IniFile | None) -> None:
        self.config = config
        self.profiles: dict[str, Section] = {}
        self.sso_sessions: dict[str, Section] = {}
        self.credentials: dict[str, Section] = dict(credentials.sections) if credentials else {}
        self.credentials_file = credentials
        for name, section in (config.sections if config else {}).items():
            kind, _, rest = name.partition(" ")
            if name == "default":
                self.profiles["default"] = section
            elif kind == "profile" and rest.strip():
                self.profiles[rest.strip()] = section
            elif kind == "sso-session" and rest.strip():
                self.sso_sessions[rest.strip()] = section

    def where(self, section: Section, key: str | None = None) -> str:
        assert self.config is not None
        return self.config.where(section, key)

    def names(self) -> list[str]:
        return sorted(set(self.profiles) | set(self.credentials))


def _static_keys(name: str, section: Section) -> StaticKeysProfile | None:
    values = section.values
    if "aws_access_key_id" not in values or "aws_secret_access_key" not in values:
        return None
    token = values.get("aws_session_token")
    return StaticKeysProfile(
        name=name,
        access_key_id=values["aws_access_key_id"],
        secret_access_key=Secret(values["aws_secret_access_key"]),
        session_token=Secret(token) if token else None,
        region=values.get("region") or None,
    )


class ProfileBuilder:
    """Turns the parsed files into specs, collecting what cannot be served.

    :meth:`classify` first, then the credd TOML's sessions are added to ``trusted``
    (:mod:`credd.config.load`), then :meth:`drop_broken_chains` unserves what
    ends in nothing usable.
    """

    def __init__(self, aws: AwsConfig) -> None:
        self.aws = aws
        self.sessions: dict[str, SsoSessionSpec] = {}
        #: Sign-In sessions, by ``login_session``
        self.signin: dict[str, SigninSessionSpec] = {}
        self.profiles: dict[str, ServedProfile] = {}
        self.sources: dict[str, SigningSource] = {}
        self.unserved: dict[str, str] = {}
        #: the credd config's CreateTokenWithIAM sessions
        self.trusted: dict[str, TrustedIdentitySpec] = {}

    def classify(self) -> None:
        for name in self.aws.names():
            self._classify(name)

    def sso_session(self, name: str) -> SsoSessionSpec | None:
        """The ``[sso-session NAME]``, whether or not a profile uses it; ``None`` if undefined."""
        section = self.aws.sso_sessions.get(name)
        if name in self.sessions or section is None:
            return self.sessions.get(name)
        return self._named_session(name, section, None)

    def _session_for(self, name: str, section: Section) -> str:
        values = section.values
        session_name = values.get("sso_session")
        if session_name:
            spec = self._named_session(session_name, section, name)
            for key, value in (("sso_start_url", spec.start_url), ("sso_region", spec.region)):
                if key in values and values[key] != value:
                    raise ConfigError(
                        f"{self.aws.where(section, key)}: {key} in [profile {name}] differs "
                        f"from [sso-session {session_name}]"
                    )
            return spec.name
        start_url, region = values.get("sso_start_url"), values.get("sso_region")
        if not start_url or not region:
            missing = "sso_start_url" if not start_url else "sso_region"
            raise _Unservable(f"{missing} is missing (or name an sso_session)")
        if start_url not in self.sessions:
            self.sessions[start_url] = SsoSessionSpec(
                name=start_url,
                start_url=start_url,
                region=region,
                registration_scopes=(),
                legacy=True,
                endpoint_profile=name,
            )
        return start_url

    def _named_session(
        self, session_name: str, section: Section, profile: str | None
    ) -> SsoSessionSpec:
        if session_name in self.sessions:
            return self.sessions[session_name]
        session = self.aws.sso_sessions.get(session_name)
        if session is None:
            raise ConfigError(
                f"{self.aws.where(section, 'sso_session')}: sso_session: "
                f"[sso-session {session_name}] is not defined"
            )
        values = session.values
        for key in ("sso_start_url", "sso_region"):
            if not values.get(key):
                raise ConfigError(
                    f"{self.aws.where(session)}: {key}: missing in [sso-session {session_name}]"
                )
        scopes = tuple(
            s.strip() for s in values.get("sso_registration_scopes", "").split(",") if s.strip()
        )
        spec = SsoSessionSpec(
            name=session_name,
            start_url=values["sso_start_url"],
            region=values["sso_region"],
            registration_scopes=scopes or DEFAULT_SCOPES,
            legacy=False,
            endpoint_profile=profile,
        )
        self.sessions[session_name] = spec
        return spec

    def _classify(self, name: str) -> None:
        section = self.aws.profiles.get(name)
        creds_section = self.aws.credentials.get(name)
        try:
            if section is not None:
                served = self._served(name, section)
                if served is not None:
                    self.profiles[name] = served
                    return
            # botocore's order: the credentials file's keys, then login, then the rest (6.4)
            keys_first = creds_section is not None and _static_keys(name, creds_section)
            if section is not None and "login_session" in section.values and not keys_first:
                self.profiles[name] = self._signin(name, section)
                return
            for candidate in (creds_section, section):
                keys = _static_keys(name, candidate) if candidate else None
                if keys is not None:
                    self.sources[name] = keys
                    self.unserved[name] = "static keys serve themselves"
                    return
            values = section.values if section else {}
            if "credential_process" in values:
                self.sources[name] = ProcessProfile(
                    name, values["credential_process"], values.get("region") or None
                )
                self.unserved[name] = "credential_process profiles serve themselves"
            elif section is not None and name != "default":
                self.unserved[name] = "no credential source credd can serve"
        except _Unservable as exc:
            self.unserved[name] = str(exc)

    def _signin(self, name: str, section: Section) -> SigninProfile:
        """A ``login_session`` profile (``aws login``); profiles naming one share its session."""
        login_session = section.values["login_session"]
        if not login_session:
            raise _Unservable(f"login_session is empty (run: credd login {name} --signin)")
        region = section.values.get("region") or None
        if login_session not in self.signin:
            self.signin[login_session] = SigninSessionSpec(
                name=login_session, region=region or DEFAULT_SIGNIN_REGION, profile=name
            )
        return SigninProfile(name=name, session=login_session, region=region)

    def _served(self, name: str, section: Section) -> ServedProfile | None:
        values = section.values
        if "role_arn" in values:
            return self._assume_role(name, section)
        if "sso_account_id" in values or "sso_role_name" in values:
            for key in ("sso_account_id", "sso_role_name"):
                if not values.get(key):
                    raise _Unservable(f"{key} is missing")
            account = values["sso_account_id"]
            if not ACCOUNT_ID.match(account):
                raise ConfigError(
                    f"{self.aws.where(section, 'sso_account_id')}: sso_account_id: "
                    f"expected 12 digits, found {account!r}"
                )
            return SsoRoleProfile(
                name=name,
                session=self._session_for(name, section),
                account_id=account,
                role_name=values["sso_role_name"],
                region=values.get("region") or None,
            )
        return None

    def _assume_role(self, name: str, section: Section) -> AssumeRoleProfile:
        values = section.values
        role_arn = values["role_arn"]
        if not ROLE_ARN.match(role_arn):
            raise ConfigError(
                f"{self.aws.where(section, 'role_arn')}: role_arn: not a role ARN: {role_arn!r}"
            )
        if "credential_source" in values:
            raise _Unservable("credential_source is not supported; use source_profile")
        if "web_identity_token_file" in values:
            raise _Unservable("web identity profiles serve themselves")
        if "mfa_serial" in values:
            raise _Unservable("roles that need an MFA code cannot be renewed unattended")
        source = values.get("source_profile")
        if not source:
            raise _Unservable("role_arn without source_profile")
        session_name = values.get("role_session_name") or None
        if session_name is not None and not SESSION_NAME.match(session_name):
            raise ConfigError(
                f"{self.aws.where(section, 'role_session_name')}: role_session_name: "
                r"2 to 64 characters of [\w+=,.@-] expected"
            )
        duration: int | None = None
        if "duration_seconds" in values:
            text = values["duration_seconds"]
            if not WHOLE_NUMBER.match(text) or not 900 <= int(text) <= 43200:
                raise ConfigError(
                    f"{self.aws.where(section, 'duration_seconds')}: duration_seconds: "
                    f"expected a whole number from 900 to 43200, found {text!r}"
                )
            duration = int(text)
        return AssumeRoleProfile(
            name=name,
            source_profile=source,
            role_arn=role_arn,
            role_session_name=session_name,
            duration_seconds=duration,
            external_id=values.get("external_id") or None,
            region=values.get("region") or None,
        )

    def drop_broken_chains(self) -> None:
        """Unserve role profiles (and sessions) whose sources do not end in a usable source."""
        changed = True
        while changed:
            changed = False
            for name, spec in list(self.trusted.items()):
                reason = self._trusted_problem(spec, set())
                if reason:
                    del self.trusted[name]
                    self.profiles.pop(name, None)
                    self.unserved[name] = reason
                    changed = True
            for name, profile in list(self.profiles.items()):
                if not isinstance(profile, AssumeRoleProfile):
                    continue
                reason = self._chain_problem(profile)
                if reason:
                    del self.profiles[name]
                    self.unserved[name] = reason
                    changed = True

    def _chain_problem(self, profile: AssumeRoleProfile | IdentityEnhancedProfile) -> str | None:
        seen = {profile.name}
        current: str | None = profile.source_profile
        while current is not None:
            if current in seen:
                return f"source_profile chain loops back to {current!r}"
            seen.add(current)
            if current in self.sources:
                return None
            target = self.profiles.get(current)
            if target is None:
                why = self.unserved.get(current, "it is not defined")
                return f"source_profile {current!r} cannot be used: {why}"
            if isinstance(target, SsoRoleProfile | SigninProfile):
                return None
            current = target.source_profile
        return None  # the default chain

    def _trusted_problem(self, spec: TrustedIdentitySpec, seen: set[str]) -> str | None:
        """What keeps a CreateTokenWithIAM session from working: its signer or its subject."""
        seen.add(spec.name)
        source = spec.source_profile
        if source is not None and source not in self.sources:
            target = self.profiles.get(source)
            if target is None:
                why = self.unserved.get(source, "it is not defined")
                return f"source_profile {source!r} cannot be used: {why}"
            if not isinstance(target, SsoRoleProfile | SigninProfile):
                loop = self._chain_problem(target) if target.name != spec.name else "it is itself"
                if loop:
                    return f"source_profile {source!r} cannot be used: {loop}"
        subject = spec.subject_session
        if subject is None or subject in self.sessions:
            return None
        if subject in seen:
            return f"subject_session chain loops back to {subject!r}"
        inner = self.trusted.get(subject)
        if inner is None:
            why = self.unserved.get(subject, "it is not defined")
            return f"subject_session {subject!r} cannot be used: {why}"
        problem = self._trusted_problem(inner, seen)
        return f"subject_session {subject!r} cannot be used: {problem}" if problem else None


class _Unservable(Exception):
    """A well-formed profile credd cannot serve: reported, not fatal."""
