"""The AWS configs and credd tables the tests write, and the names they use.

One place for what a test's world is configured with, so that tests in
different modules mean the same session, account and user by the same name.
"""

from __future__ import annotations

from credd.testing.emulator import AccessKey
from credd.testing.emulator.identity_center import DEFAULT_APPLICATION_ARN

START_URL = "https://d-1234567890.awsapps.com/start"
ACCOUNT = "111111111111"
#: the emulator's AWS Sign-In user (``aws login``)
USER_ARN = "arn:aws:iam::111111111111:user/alice"
#: credd's ``[server]`` table for a test: any free loopback port
LISTEN_ANY_PORT = '[server]\nlisten = "127.0.0.1:0"\n'

#: an AWS config as `aws configure sso` writes it, plus a role chained on top
AWS_CONFIG = f"""\
[sso-session my-sso]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

[profile dev]
sso_session = my-sso
sso_account_id = {ACCOUNT}
sso_role_name = ReadOnly
region = eu-west-1

[profile admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = dev
role_session_name = credd-test
"""

#: as a user might have it before `credd login console --signin`: comments, another profile
SIGNIN_CONFIG = """\
# my AWS config
[profile other]
region = eu-west-1
; a comment in other

[profile console]
# credd login console --signin fills this in
output = json

[profile console-admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = console
role_session_name = credd-console
duration_seconds = 3600
"""

#: the trusted-identity application and the identity-enhanced role its profiles assume
TRUSTED_APPLICATION = DEFAULT_APPLICATION_ARN
ANALYST_ROLE = "arn:aws:iam::111111111111:role/Analyst"


def static_keys_profile(keys: AccessKey, name: str = "app-iam") -> str:
    """An AWS config ``[profile NAME]`` with an emulator IAM user's static keys."""
    return (
        f"\n[profile {name}]\n"
        f"aws_access_key_id = {keys.access_key_id}\n"
        f"aws_secret_access_key = {keys.secret_access_key.reveal()}\n"
    )


def credd_profile(grant: str, *, name: str = "analyst", **keys: str) -> str:
    """A ``[profiles.NAME]`` table: the README's example, changed by ``keys`` ("" drops one)."""
    table = {
        "type": "create-token-with-iam",
        "client_id": TRUSTED_APPLICATION,
        "sso_region": "us-east-1",
        "source_profile": "app-iam",
        "grant_type": grant,
        "scopes": '["openid", "sts:identity_context"]',
        "role_arn": ANALYST_ROLE,
        "role_session_name": "credd-analyst",
        **keys,
    }
    lines = [f"[profiles.{name}]"]
    for key, value in table.items():
        if value:
            shown = value if value.startswith(("[", "{")) or value.isdigit() else f'"{value}"'
            lines.append(f"{key} = {shown}")
    return "\n".join(lines) + "\n"
