"""STS over the query protocol (``POST /``, form-encoded, XML answers), protocols.md §5.

``Action`` picks the operation: ``AssumeRole`` and ``GetCallerIdentity``. Every
call is SigV4-verified (service ``sts``, any region) against credentials the
emulator issued; the verification's failures become the codes AWS sends:
``MissingAuthenticationToken``, ``IncompleteSignature``, ``InvalidClientTokenId``
(unknown key, wrong or missing session token), ``ExpiredToken`` (400),
``SignatureDoesNotMatch`` (also for clock skew and a wrong service).

AssumeRole takes ``ProvidedContexts`` (§5): one context from the provider
``arn:aws:iam::aws:contextProvider/IdentityCenter`` whose ``ContextAssertion``
is an identity context CreateTokenWithIAM issued (:mod:`.iam_token`), for a
role whose trust policy allows ``sts:SetContext``. The refusals, where AWS's
are not documented: the model's constraints (1-5 contexts, ``ProviderArn``
20-2048 and ``ContextAssertion`` 4-2048 characters, both present) are
``ValidationError``; another provider, the same provider twice, or an assertion
the emulator never issued is ``InvalidParameterValue``; an expired one is the
modeled ``ExpiredTokenException`` (400); a trust policy without
``sts:SetContext`` is ``AccessDenied``. The session is *identity-enhanced*:
its credentials remember the :class:`~.state.IdentityContext`
(``emu.state.credentials[key].identity_context``), and GetCallerIdentity keeps
the ``Arn``/``UserId``/``Account`` AWS shows for any role session while adding
``<OnBehalfOf><UserId>…</UserId><IdentityStoreArn>…</IdentityStoreArn></OnBehalfOf>``
(CloudTrail's name for the same fact) to its result, which botocore's parser
drops but the raw body (``after-call`` event) shows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import parse_qsl
from xml.etree import ElementTree as ET

from aiohttp import web

from . import identities, sigv4
from .errors import STS_NAMESPACE, StsError, xml_response
from .operations import REQUEST_ID, Operation, invoke
from .runtime import Runtime
from .state import IdentityContext, IssuedCredentials, TemporaryCredentials

API_VERSION: Final = "2011-06-15"
SESSION_NAME_RE: Final = re.compile(r"[\w+=,.@-]*")
EXTERNAL_ID_RE: Final = re.compile(r"[\w+=,.@:/-]*")
DEFAULT_DURATION: Final = 3600
IDENTITY_CENTER_PROVIDER: Final = "arn:aws:iam::aws:contextProvider/IdentityCenter"
MAX_PROVIDED_CONTEXTS: Final = 5
_CONTEXT_KEY_RE: Final = re.compile(
    r"ProvidedContexts\.member\.(?P<index>[1-9][0-9]*)\.(?P<member>ProviderArn|ContextAssertion)"
)

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
        caller = self._caller(request, await request.read())
        principal = caller.principal
        result: dict[str, str | XmlTree] = {
            "Arn": principal.arn,
            "UserId": principal.user_id,
            "Account": principal.account_id,
        }
        if isinstance(caller, TemporaryCredentials) and caller.identity_context is not None:
            result["OnBehalfOf"] = {
                "UserId": caller.identity_context.user_id,
                "IdentityStoreArn": caller.identity_context.identity_store_arn,
            }
        return _result(request, "GetCallerIdentity", result)

    async def _assume_role(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # Nothing awaits from here on: authentication and issuing are one step.
        caller = self._caller(request, body)
        form = _form(body)
        role_arn = _role_arn(form.get("RoleArn"))
        session_name = _session_name(form.get("RoleSessionName"))
        duration = self._duration(form.get("DurationSeconds"), caller)
        contexts = _provided_contexts(form)
        self._check_trust(caller, role_arn, _external_id(form.get("ExternalId")), duration)
        identity_context = self._identity_context(caller, role_arn, contexts)
        cap = self._rt.config.assume_role_cap
        lifetime = duration if cap is None else min(duration, cap)
        principal = identities.assumed_role_session(role_arn, session_name)
        issued = self._rt.state.issue_credentials(
            principal,
            self._rt.in_seconds(lifetime),
            identity_context,
            # what the console's federation endpoint asks (IAM User Guide, custom broker)
            from_temporary=isinstance(caller, TemporaryCredentials),
        )
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

    def _identity_context(
        self, caller: IssuedCredentials, role_arn: str, contexts: tuple[ProvidedContext, ...]
    ) -> IdentityContext | None:
        """The identity an identity-enhanced session is for (§5), or ``None`` for a plain one."""
        if not contexts:
            return None
        role = self._rt.directory.assumable_role(role_arn)
        if role is None or not role.allows_set_context:
            raise StsError(
                "AccessDenied",
                f"User: {caller.principal.arn} is not authorized to perform: "
                f"sts:SetContext on resource: {role_arn}",
            )
        providers = [context.provider_arn for context in contexts]
        for provider in providers:
            if provider != IDENTITY_CENTER_PROVIDER:
                raise StsError("InvalidParameterValue", f"Unsupported context provider: {provider}")
        if len(providers) > 1:
            raise StsError(
                "InvalidParameterValue", f"Duplicate context provider: {IDENTITY_CENTER_PROVIDER}"
            )
        context = self._rt.state.iam.identity_contexts.get(contexts[0].assertion)
        if context is None:
            raise StsError("InvalidParameterValue", "The provided context assertion is invalid")
        if self._rt.now() >= context.expires_at:
            raise StsError("ExpiredTokenException", "The provided context assertion has expired")
        return context

    # authentication ---------------------------------------------------------

    def _caller(self, request: web.Request, body: bytes) -> IssuedCredentials:
        signed = sigv4.SignedRequest.of(request, body)
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


@dataclass(frozen=True)
class ProvidedContext:
    provider_arn: str
    assertion: str


def _provided_contexts(form: Mapping[str, str]) -> tuple[ProvidedContext, ...]:
    """``ProvidedContexts.member.N.ProviderArn`` / ``.ContextAssertion``, checked against the model.

    An empty list arrives as a bare ``ProvidedContexts=`` (botocore's query serializer).
    """
    members: dict[int, dict[str, str]] = {}
    for key, value in form.items():
        if (match := _CONTEXT_KEY_RE.fullmatch(key)) is not None:
            members.setdefault(int(match["index"]), {})[match["member"]] = value
    if "ProvidedContexts" in form and not members:
        raise _validation_error("providedContexts", "[]", "have length greater than or equal to 1")
    if len(members) > MAX_PROVIDED_CONTEXTS:
        raise StsError(
            "ValidationError",
            "1 validation error detected: Value at 'providedContexts' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_PROVIDED_CONTEXTS}",
        )
    contexts = []
    for position, index in enumerate(sorted(members), start=1):
        member = members[index]
        where = f"providedContexts.{position}.member"
        provider = member.get("ProviderArn")
        if provider is None:
            raise _validation_error(f"{where}.providerArn", None, "not be null")
        if not 20 <= len(provider) <= 2048:
            raise _validation_error(
                f"{where}.providerArn", provider, "have length between 20 and 2048"
            )
        assertion = member.get("ContextAssertion")
        if assertion is None:
            raise _validation_error(f"{where}.contextAssertion", None, "not be null")
        if not 4 <= len(assertion) <= 2048:
            # The assertion itself is never echoed: it stands for the user.
            raise StsError(
                "ValidationError",
                f"1 validation error detected: Value at '{where}.contextAssertion' failed to "
                "satisfy constraint: Member must have length between 4 and 2048",
            )
        contexts.append(ProvidedContext(provider, assertion))
    return tuple(contexts)


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
