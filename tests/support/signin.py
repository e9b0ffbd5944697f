"""AWS Sign-In as the AWS CLI and a user do it, and ``credd login --signin`` in process.

The client side of ``aws login`` (protocols.md §4): PKCE, the browser step, the
code exchange, and DPoP proofs built with ``cryptography`` exactly as botocore
builds them (§4.4), with knobs to break them. The emulator's tests drive it
with these, and credd's tests use them to play a session ``aws login`` made.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from credd.clock import ManualClock
from credd.config.settings import DEFAULT_SIGNIN_REGION
from credd.config.writer import inspect_profile, write_login_session
from credd.sessions.signin_login import (
    SigninLogin,
    SigninLoginOptions,
    SigninResult,
    SigninTarget,
)
from credd.testing.emulator import Emulator
from credd.testing.emulator.clients import visit
from credd.wiring import aws_clients, login_cache
from tests.support.inprocess import RecordingUI
from tests.support.world import World

SAME_DEVICE = "arn:aws:signin:::devtools/same-device"
CALLBACK = "http://127.0.0.1:43210/oauth/callback"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: object) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_verifier() -> str:
    return secrets.token_urlsafe(48)[:64]


def challenge(verifier: str) -> str:
    """``code_challenge`` as the CLI computes it (``SHA-256``, base64url, no ``=``)."""
    return b64url(hashlib.sha256(verifier.encode()).digest())


@dataclass
class Dpop:
    """DPoP proofs as botocore builds them (§4.4), with knobs to break them."""

    clock: ManualClock
    key: ec.EllipticCurvePrivateKey = field(default_factory=new_key)
    #: seconds added to the clock for ``iat``
    skew: float = 0.0
    header: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    #: sign with a key other than the one the ``jwk`` names
    forge: bool = False
    #: send this proof verbatim instead of a new one
    replay: str | None = None
    enabled: bool = True
    sent: list[str] = field(default_factory=list)

    def jwk(self) -> dict[str, str]:
        numbers = self.key.public_key().public_numbers()
        return {
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
            "crv": "P-256",
        }

    def proof(self, url: str) -> str:
        parts = urlsplit(url)
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk(), **self.header}
        payload = {
            "htm": "POST",
            "htu": f"{parts.scheme}://{parts.netloc}{parts.path}",
            "iat": int(self.clock.now().timestamp() + self.skew),
            "jti": str(uuid.uuid4()),
            **self.claims,
        }
        signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
        signer = new_key() if self.forge else self.key
        r, s = decode_dss_signature(signer.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def attach(self, client: Any) -> None:
        # before-send runs per attempt, so every retry carries a fresh proof.
        client.meta.events.register("before-send.signin.CreateOAuth2Token", self._add_header)

    def _add_header(self, request: Any, **_: Any) -> None:
        if self.enabled:
            value = self.replay or self.proof(request.url)
            self.sent.append(value)
            request.headers["DPoP"] = value


def authorize_url(
    emu: Emulator,
    verifier: str,
    *,
    client_id: str = SAME_DEVICE,
    redirect_uri: str = CALLBACK,
    **overrides: str,
) -> str:
    # The CLI's order: percent-encoded params, then the challenge appended (§4.5).
    params = {
        "response_type": "code",
        "client_id": client_id,
        "state": "3f2b6a1e-8c1d-4e5f-9a7b-0c1d2e3f4a5b",
        "code_challenge_method": "SHA-256",
        "scope": "openid",
        "redirect_uri": redirect_uri,
        **overrides,
    }
    code_challenge = overrides.get("code_challenge", challenge(verifier))
    params.pop("code_challenge", None)
    return f"{emu.url}/v1/authorize?{urlencode(params)}&code_challenge={code_challenge}"


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def authorize(url: str, redirect_uri: str = CALLBACK) -> dict[str, str]:
    status, location = await visit(url)
    assert status == 302
    assert location is not None
    assert location.startswith(redirect_uri + "?")
    return query_of(location)


async def redeem(
    signin: Any,
    code: str,
    verifier: str,
    *,
    redirect_uri: str = CALLBACK,
    client_id: str = SAME_DEVICE,
) -> dict[str, Any]:
    answer = await signin.create_oauth2_token(
        tokenInput={
            "clientId": client_id,
            "grantType": "authorization_code",
            "code": code,
            "redirectUri": redirect_uri,
            "codeVerifier": verifier,
        }
    )
    output: dict[str, Any] = answer["tokenOutput"]
    return output


class ConfirmationPage:
    """The user on another device: opens the URL, reads the code the page shows, pastes it."""

    def __init__(self, ui: RecordingUI) -> None:
        self._ui = ui
        self.pasted: list[str] = []

    async def __call__(self) -> str:
        url, _ = self._ui.prompts[-1]
        async with aiohttp.ClientSession() as http, http.get(url) as page:
            assert page.status == 200, await page.text()
            text = await page.text()
        code = text.split('id="verification-code">', 1)[1].split("<", 1)[0]
        self.pasted.append(code)
        return f"  {code}  \n"


async def signin_login(
    world: World,
    profile: str = "console",
    *,
    remote: bool = False,
    ui: RecordingUI | None = None,
) -> SigninResult:
    """``credd login PROFILE --signin [--remote]`` in process: the login, then the profile."""
    settings = world.home.settings()
    paths = settings.paths
    before = inspect_profile(paths.aws_config_file, paths.aws_credentials_file, profile)
    region = before.region or DEFAULT_SIGNIN_REGION
    ui = ui or RecordingUI()
    result = await SigninLogin(
        SigninTarget(profile, region, profile if before.exists else None),
        cache=login_cache(settings),
        clients=aws_clients(settings),
        clock=world.clock,
        ui=ui,
        options=SigninLoginOptions(remote=remote),
        read_code=ConfirmationPage(ui) if remote else None,
    ).run()
    write_login_session(
        paths.aws_config_file, profile, result.login_session, None if before.region else region
    )
    return result
