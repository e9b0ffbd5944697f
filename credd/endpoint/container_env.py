"""What ``credd container env`` gives a container: Docker ``--env-file`` lines.

A container gets a token of its own, scoped to one profile (purpose
``container``), and the URL of the container listener (``[containers] listen``,
:mod:`credd.endpoint.containers`), as ``KEY=VALUE`` lines: Docker's and Podman's
``--env-file``, Compose's ``env_file:`` take them as they are, with no quotes and
no ``export`` (interface.md, "Containers"). Only the token (``credd_`` and
URL-safe base64), the URL and the region go in, none of which needs quoting.

**Two ways to the listener** (protocols.md 8.2):

* ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` with ``AWS_CONTAINER_AUTHORIZATION_TOKEN``:
  every SDK since 2020 or so; 169.254.170.2 is one of the hosts they accept over
  plain HTTP, and the listener's own port is in the URL.
* ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (``--relative``): older SDKs and some
  languages (Debian's Ruby ``aws-sdk-core``, PHP AsyncAws) know only this. It is
  relative to ``http://169.254.170.2`` on port 80 and carries no token, so, as ECS
  does, the path itself is the secret: ``/v2/credentials/<token>``, the grant's
  token (the grants file keeps only its hash, as for every token). It needs the
  setup's port 80 on that address (``credd container setup`` arranges it).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

from credd.config.settings import ContainersSettings
from credd.platform.containers import CONTAINER_ADDRESS as RELATIVE_URI_HOST
from credd.platform.containers import RELATIVE_URI_PORT, port80_arranged

#: the capability paths the container listener serves
CAPABILITY_PATH = "/v2/credentials/"


def full_uri(containers: ContainersSettings, profile: str) -> str:
    """``http://HOST:PORT/v1/credentials/PROFILE`` on the container listener."""
    if containers.listen is None:
        raise ValueError("no [containers] listen")
    quoted = urllib.parse.quote(profile, safe="")
    return f"http://{containers.listen}/v1/credentials/{quoted}"


def relative_uri(token: str) -> str:
    """The capability path of a container grant: its token is the unguessable part."""
    return CAPABILITY_PATH + token


def container_variables(
    containers: ContainersSettings,
    profile: str,
    token: str,
    region: str | None,
    *,
    relative: bool = False,
) -> dict[str, str]:
    """The variables a container needs for ``profile``, in the order they are printed."""
    if relative:
        values = {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": relative_uri(token)}
    else:
        values = {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": full_uri(containers, profile),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        }
    if region:
        values["AWS_REGION"] = values["AWS_DEFAULT_REGION"] = region
    return values


def env_file_lines(values: Mapping[str, str]) -> list[str]:
    """``KEY=VALUE`` lines as ``--env-file`` reads them: taken literally, one per line."""
    for key, value in values.items():
        # an env file has no quoting: a newline would start another variable
        if "\n" in value or "\r" in value or "\x00" in value:
            raise ValueError(f"{key} cannot be written to an env file")
    return [f"{key}={value}" for key, value in values.items()]


def relative_uri_refusal(containers: ContainersSettings) -> str | None:
    """Why ``RELATIVE_URI`` cannot reach this listener whatever the setup, or ``None``."""
    if containers.host != RELATIVE_URI_HOST:
        return (
            f"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI always means http://{RELATIVE_URI_HOST}"
            f" port {RELATIVE_URI_PORT}, and [containers] listen is {containers.listen}"
        )
    return None


def port_80_problem(containers: ContainersSettings) -> str | None:
    """Why a client of ``RELATIVE_URI`` would not reach this listener, or ``None``.

    Asks the setup's own proof (:func:`credd.platform.containers.port80_arranged`:
    a connection to port 80 that arrives on the listener's port).
    """
    refused = relative_uri_refusal(containers)
    if refused is not None:
        return refused
    if not port80_arranged(containers.port, address=RELATIVE_URI_HOST):
        return (
            f"port {RELATIVE_URI_PORT} on {RELATIVE_URI_HOST} is not sent on to the container "
            f"listener's port {containers.port}; run credd container setup (as root) to redirect it"
        )
    return None
