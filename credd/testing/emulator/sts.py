"""STS over the query protocol (``POST /``, form-encoded, XML answers), protocols.md §5.

``Action`` picks the operation: ``AssumeRole`` and ``GetCallerIdentity``. Every
call is SigV4-verified (service ``sts``, any region) against credentials the
emulator issued; the verification's failures become the codes AWS sends:
``MissingAuthenticationToken``, ``IncompleteSignature``, ``InvalidClientTokenId``
(unknown key, wrong or missing session token), ``ExpiredToken`` (400),
``SignatureDoesNotMatch`` (also for clock skew and a wrong service).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

from aiohttp import web

from . import identities, sigv4
from .errors import STS_NAMESPACE, StsError, xml_response
from .operations import REQUEST_ID, Operation, invoke
from .runtime import Runtime
from .state import IssuedCredentials

API_VERSION: Final = "2011-06-15"
SESSION_NAME_RE: Final = re.compile(r"[\w+=,.@-]*")
EXTERNAL_ID_RE: Final = re.compile(r"[\w+=,.@:/-]*")
DEFAULT_DURATION: Final = 3600

_AUTH_FAILURE_CODES: Final[Mapping[sigv4.FailureReason, str]] = {
    "missing": "MissingAuthenticationToken",
    "incomplete": "IncompleteSignature",
    "wrong_service": "SignatureDoesNotMatch",
    "unknown_key": "InvalidClientTokenId",
    "bad_token": "InvalidClientTokenId",
    "expired": "ExpiredToken",
    "skewed": "SignatureDoesNotMatch",
    "signature": "SignatureDoesNotMatch",
}

XmlTree = Mapping[str, "str | XmlTree"]


def _validation_error(member: str, value: str | None, constraint: str) -> StsError:
    """AWS's validation wording, e.g. ``Value 'x' at 'roleSessionName' failed to satisfy…``."""
    shown = "null" if value is None else f"'{value}'"
    return StsError(
        "ValidationError",
        f"1 validation error detected: Value {shown} at '{member}' failed to satisfy "
        f"constraint: Member must {constraint}",
    )


class StsService:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.assume_role = Operation("AssumeRole", StsError, self._assume_role)
        self.get_caller_identity = Operation(
            "GetCallerIdentity", StsError, self._get_caller_identity
        )
        self._by_action = {op.name: op for op in self.operations}

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (self.assume_role, self.get_caller_identity)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/", self._dispatch)]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        form = _form(await request.read())  # aiohttp keeps the body for the handler
        action, version = form.get("Action"), form.get("Version")
        operation = self._by_action.get(action or "")
        if operation is None or version != API_VERSION:
            error = StsError(
                "InvalidAction", f"Could not find operation {action} for version {version}"
            )
            return error.response(request[REQUEST_ID])
        return await invoke(operation, request, self._rt)

    # operations -------------------------------------------------------------

    async def _get_caller_identity(self, request: web.Request) -> web.StreamResponse:
        principal = self._caller(request, await request.read()).principal
        result = {
            "Arn": principal.arn,
            "UserId": principal.user_id,
            "Account": principal.account_id,
        }
        return _result(request, "GetCallerIdentity", result)

    async def _assume_role(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # Nothing awaits from here on: authentication and issuing are one step.
        caller = self._caller(request, body)
        form = _form(body)
        if any(key.startswith("ProvidedContexts.") for key in form):
            # Identity-enhanced sessions (§5) come with CreateTokenWithIAM, in a later issue.
            raise StsError("InvalidParameterValue", "ProvidedContexts is not supported yet")
        role_arn = _role_arn(form.get("RoleArn"))
        session_name = _session_name(form.get("RoleSessionName"))
        duration = self._duration(form.get("DurationSeconds"), caller)
        self._check_trust(caller, role_arn, _external_id(form.get("ExternalId")), duration)
        cap = self._rt.config.assume_role_cap
        lifetime = duration if cap is None else min(duration, cap)
        principal = identities.assumed_role_session(role_arn, session_name)
        issued = self._rt.state.issue_credentials(principal, self._rt.in_seconds(lifetime))
        result: XmlTree = {
            "AssumedRoleUser": {"Arn": principal.arn, "AssumedRoleId": principal.user_id},
            "Credentials": {
                "SessionToken": issued.session_token.reveal(),
                "SecretAccessKey": issued.secret_access_key.reveal(),
                "Expiration": _iso8601(issued.expires_at),
                "AccessKeyId": issued.access_key_id,
            },
        }
        return _result(request, "AssumeRole", result)

    # AssumeRole rules -------------------------------------------------------

    def _duration(self, raw: str | None, caller: IssuedCredentials) -> int:
        limit = self._rt.config.role_chaining_limit if caller.principal.is_role_session else None
        if raw is None:
            return DEFAULT_DURATION if limit is None else min(DEFAULT_DURATION, limit)
        duration = _duration_seconds(raw)
        if limit is not None and duration > limit:
            # Role chaining: https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles.html
            raise StsError(
                "ValidationError",
                "The requested DurationSeconds exceeds the 1 hour session limit "
                "for roles assumed by role chaining.",
            )
        return duration

    def _check_trust(
        self, caller: IssuedCredentials, role_arn: str, external_id: str | None, duration: int
    ) -> None:
        role = self._rt.directory.assumable_role(role_arn)
        if role is None or (role.external_id is not None and external_id != role.external_id):
            raise StsError(
                "AccessDenied",
                f"User: {caller.principal.arn} is not authorized to perform: "
                f"sts:AssumeRole on resource: {role_arn}",
            )
        if duration > role.max_session_duration:
            raise StsError(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )

    # authentication ---------------------------------------------------------

    def _caller(self, request: web.Request, body: bytes) -> IssuedCredentials:
        signed = sigv4.SignedRequest(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=request.headers,
            body=body,
        )
        try:
            return sigv4.authenticate(
                signed,
                service="sts",
                lookup=self._rt.state.credentials.get,
                now=self._rt.now(),
                max_skew=self._rt.config.max_clock_skew,
            )
        except sigv4.AuthFailure as failure:
            raise StsError(_AUTH_FAILURE_CODES[failure.reason], failure.message) from None


# -- parameters ----------------------------------------------------------------


def _form(body: bytes) -> dict[str, str]:
    """The query-protocol parameters of a form-encoded body."""
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def _role_arn(value: str | None) -> str:
    if value is None:
        raise _validation_error("roleArn", None, "not be null")
    if len(value) < 20:
        raise _validation_error("roleArn", value, "have length greater than or equal to 20")
    if not identities.ROLE_ARN_RE.fullmatch(value):
        raise StsError("ValidationError", f"{value} is invalid")
    return value


def _duration_seconds(raw: str) -> int:
    try:
        duration = int(raw)
    except ValueError:
        raise _validation_error("durationSeconds", raw, "be an integer") from None
    if duration < 900:
        raise _validation_error("durationSeconds", raw, "have value greater than or equal to 900")
    if duration > 43200:
        raise _validation_error("durationSeconds", raw, "have value less than or equal to 43200")
    return duration


def _session_name(value: str | None) -> str:
    if value is None:
        raise _validation_error("roleSessionName", None, "not be null")
    if len(value) < 2:
        raise _validation_error("roleSessionName", value, "have length greater than or equal to 2")
    if len(value) > 64:
        raise _validation_error("roleSessionName", value, "have length less than or equal to 64")
    if not SESSION_NAME_RE.fullmatch(value):
        raise _validation_error(
            "roleSessionName",
            value,
            f"satisfy regular expression pattern: {SESSION_NAME_RE.pattern}",
        )
    return value


def _external_id(value: str | None) -> str | None:
    # The value itself is never echoed: it is the shared secret of a trust policy.
    if value is not None and not (2 <= len(value) <= 1224 and EXTERNAL_ID_RE.fullmatch(value)):
        raise StsError(
            "ValidationError",
            "1 validation error detected: Value at 'externalId' failed to satisfy constraint: "
            f"Member must have length between 2 and 1224 and match {EXTERNAL_ID_RE.pattern}",
        )
    return value


# -- XML -------------------------------------------------------------------------


def _result(request: web.Request, action: str, result: XmlTree) -> web.Response:
    """``<ActionResponse><ActionResult>…</ActionResult><ResponseMetadata>…`` as STS sends it."""
    root = ET.Element(f"{action}Response", xmlns=STS_NAMESPACE)
    _append(ET.SubElement(root, f"{action}Result"), result)
    _append(ET.SubElement(root, "ResponseMetadata"), {"RequestId": request[REQUEST_ID]})
    return xml_response(root)


def _append(parent: ET.Element, tree: XmlTree) -> None:
    for name, value in tree.items():
        child = ET.SubElement(parent, name)
        if isinstance(value, str):
            child.text = value
        else:
            _append(child, value)


def _iso8601(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
