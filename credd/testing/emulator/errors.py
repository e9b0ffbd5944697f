"""AWS error responses, shaped exactly as each service sends them.

Clients recognise a modeled error by the ``x-amzn-ErrorType`` header (rest-json)
or the XML ``<Code>`` (query protocol), never by the status alone
(protocols.md §1, §11.1), so every error here carries its shape name, the
status of the service model, and the body members the model declares:

* sso-oidc (:class:`OidcError`): ``{"error", "error_description"}``, statuses of
  protocols.md §2.3 — ``AccessDeniedException`` and ``ExpiredTokenException``
  are 400, only ``InvalidClientException`` is 401;
* SSO portal (:class:`PortalError`): ``{"message"}`` plus ``__type`` (§3);
* STS (:class:`StsError`): ``<ErrorResponse>`` XML in the STS namespace (§5);
* AWS Sign-In (:class:`SigninError`): ``{"error", "message"}`` with an
  ``OAuth2ErrorCode``; ``AccessDeniedException`` is 401 or 403 by that code (§4.3);
* the browser pages ``/authorize`` and ``/device`` (:class:`PageError`): HTML.
Every response, error or not, gets ``x-amzn-RequestId`` from the middleware in
:mod:`.operations`; STS also repeats it in the body.

Fault injection builds its errors through the same classes, so an injected
error cannot be told from a real one.
"""

from __future__ import annotations

import html
import json
from abc import ABC, abstractmethod
from typing import ClassVar, Final
from xml.etree import ElementTree as ET

from aiohttp import web

STS_NAMESPACE: Final = "https://sts.amazonaws.com/doc/2011-06-15/"
REQUEST_ID_HEADER: Final = "x-amzn-RequestId"
ERROR_TYPE_HEADER: Final = "x-amzn-ErrorType"


class AwsError(Exception, ABC):
    """An error answer of one service. Subclasses know the service's catalogue and body shape."""

    #: shape name -> HTTP status, from the service model
    STATUSES: ClassVar[dict[str, int]] = {}
    #: what an injected fault answers when told only "fail"
    DEFAULT_FAULT_CODE: ClassVar[str] = "InternalServerException"
    CONTENT_TYPE: ClassVar[str] = "application/json"

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else self.STATUSES.get(code, 400)

    @classmethod
    def injected(cls, code: str | None, status: int | None, message: str | None) -> AwsError:
        """The error a fault asks for: the modeled status unless overridden, else 500."""
        code = code or cls.DEFAULT_FAULT_CODE
        status = status if status is not None else cls.STATUSES.get(code, 500)
        return cls(code, message or "Injected fault", status=status)

    @abstractmethod
    def response(self, request_id: str) -> web.Response:
        """The whole HTTP answer; ``request_id`` is what the middleware puts in the header."""


def _json_response(status: int, body: dict[str, str], error_type: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=AwsError.CONTENT_TYPE,
        headers={ERROR_TYPE_HEADER: error_type},
    )


class OidcError(AwsError):
    """sso-oidc (protocols.md §2.3)."""

    #: shape -> (status, OAuth ``error`` value)
    CATALOGUE: ClassVar[dict[str, tuple[int, str]]] = {
        "InvalidRequestException": (400, "invalid_request"),
        "InvalidClientException": (401, "invalid_client"),
        "InvalidGrantException": (400, "invalid_grant"),
        "UnauthorizedClientException": (400, "unauthorized_client"),
        "UnsupportedGrantTypeException": (400, "unsupported_grant_type"),
        "InvalidScopeException": (400, "invalid_scope"),
        "AuthorizationPendingException": (400, "authorization_pending"),
        "SlowDownException": (400, "slow_down"),
        "AccessDeniedException": (400, "access_denied"),
        "ExpiredTokenException": (400, "expired_token"),
        "InternalServerException": (500, "server_error"),
        "InvalidClientMetadataException": (400, "invalid_client_metadata"),
        "InvalidRedirectUriException": (400, "invalid_redirect_uri"),
        "InvalidRequestRegionException": (400, "invalid_request"),
    }
    STATUSES: ClassVar[dict[str, int]] = {k: v[0] for k, v in CATALOGUE.items()}

    def response(self, request_id: str) -> web.Response:
        fallback = "server_error" if self.status >= 500 else "invalid_request"
        oauth_error = self.CATALOGUE.get(self.code, (self.status, fallback))[1]
        # The real header carries a coral namespace suffix, which clients strip (§1).
        error_type = f"{self.code}:http://internal.amazon.com/coral/com.amazonaws.sso.oidc/"
        body = {"error": oauth_error, "error_description": self.message}
        return _json_response(self.status, body, error_type)


class PortalError(AwsError):
    """SSO portal (protocols.md §3); ``ForbiddenException`` is unmodeled but real."""

    STATUSES: ClassVar[dict[str, int]] = {
        "InvalidRequestException": 400,
        "UnauthorizedException": 401,
        "ForbiddenException": 403,
        "ResourceNotFoundException": 404,
        "TooManyRequestsException": 429,
        "InternalServerException": 500,
    }

    def response(self, request_id: str) -> web.Response:
        error_type = (
            f"{self.code}:http://internal.amazon.com/coral/com.amazonaws.switchboard.portal/"
        )
        body = {"message": self.message, "__type": f"com.amazonaws.switchboard.portal#{self.code}"}
        return _json_response(self.status, body, error_type)


class SigninError(AwsError):
    """AWS Sign-In (protocols.md §4.3): ``{"error": <OAuth2ErrorCode>, "message"}``.

    ``AccessDeniedException``'s status follows its ``error`` at run time: 401 for
    ``TOKEN_EXPIRED`` and ``AUTHCODE_EXPIRED``, 403 for ``USER_CREDENTIALS_CHANGED``
    and ``INSUFFICIENT_PERMISSIONS``. A fault may name either a shape or one of
    those four codes (``error_code="USER_CREDENTIALS_CHANGED"``).
    """

    STATUSES: ClassVar[dict[str, int]] = {
        "ValidationException": 400,
        "AccessDeniedException": 401,
        "TooManyRequestsError": 429,  # "Error", not "Exception" (§11.2)
        "InternalServerException": 500,
    }
    #: the ``error`` member each shape carries unless told otherwise
    DEFAULT_ERRORS: ClassVar[dict[str, str]] = {
        "ValidationException": "INVALID_REQUEST",
        "AccessDeniedException": "TOKEN_EXPIRED",
        "TooManyRequestsError": "INVALID_REQUEST",
        "InternalServerException": "server_error",  # the only lower-case value
    }
    ACCESS_DENIED_STATUSES: ClassVar[dict[str, int]] = {
        "TOKEN_EXPIRED": 401,
        "AUTHCODE_EXPIRED": 401,
        "USER_CREDENTIALS_CHANGED": 403,
        "INSUFFICIENT_PERMISSIONS": 403,
    }

    def __init__(
        self, code: str, message: str, *, status: int | None = None, error: str | None = None
    ) -> None:
        if code in self.ACCESS_DENIED_STATUSES:  # an OAuth2ErrorCode named as the code
            code, error = "AccessDeniedException", code
        shape_status = status if status is not None else self.STATUSES.get(code, 400)
        fallback = "server_error" if shape_status >= 500 else "INVALID_REQUEST"
        self.error = error or self.DEFAULT_ERRORS.get(code, fallback)
        if status is None and code == "AccessDeniedException":
            status = self.ACCESS_DENIED_STATUSES.get(self.error)
        super().__init__(code, message, status=status)

    @classmethod
    def invalid_request(cls, message: str) -> SigninError:
        return cls("ValidationException", message)

    @classmethod
    def access_denied(cls, error: str, message: str) -> SigninError:
        return cls("AccessDeniedException", message, error=error)

    @classmethod
    def injected(cls, code: str | None, status: int | None, message: str | None) -> AwsError:
        code = code or cls.DEFAULT_FAULT_CODE
        if status is None and code not in cls.ACCESS_DENIED_STATUSES:
            status = cls.STATUSES.get(code, 500)
        return cls(code, message or "Injected fault", status=status)

    def response(self, request_id: str) -> web.Response:
        body = {"error": self.error, "message": self.message}
        return _json_response(self.status, body, self.code)


class StsError(AwsError):
    """STS query protocol (protocols.md §5): ``ErrorResponse`` XML; ``Type`` by status."""

    STATUSES: ClassVar[dict[str, int]] = {
        "AccessDenied": 403,
        "ExpiredToken": 400,
        "ExpiredTokenException": 400,
        "IncompleteSignature": 400,
        "InternalFailure": 500,
        "InvalidAction": 400,
        "InvalidClientTokenId": 403,
        "InvalidParameterValue": 400,
        "MalformedPolicyDocument": 400,
        "MissingAuthenticationToken": 403,
        "PackedPolicyTooLarge": 400,
        "RegionDisabledException": 403,
        "ServiceUnavailable": 503,
        "SignatureDoesNotMatch": 403,
        "Throttling": 400,
        "ValidationError": 400,
    }
    DEFAULT_FAULT_CODE: ClassVar[str] = "InternalFailure"
    CONTENT_TYPE: ClassVar[str] = "text/xml"

    def response(self, request_id: str) -> web.Response:
        root = ET.Element("ErrorResponse", xmlns=STS_NAMESPACE)
        error = ET.SubElement(root, "Error")
        ET.SubElement(error, "Type").text = "Receiver" if self.status >= 500 else "Sender"
        ET.SubElement(error, "Code").text = self.code
        ET.SubElement(error, "Message").text = self.message
        ET.SubElement(root, "RequestId").text = request_id
        return xml_response(root, status=self.status)


class PageError(AwsError):
    """A browser-facing page (``/authorize``, ``/device``) that refuses the request."""

    DEFAULT_FAULT_CODE: ClassVar[str] = "InternalServerError"
    CONTENT_TYPE: ClassVar[str] = "text/html"

    def response(self, request_id: str) -> web.Response:
        return html_page(f"{self.status} {self.code}", self.message, self.status)


def xml_response(root: ET.Element, *, status: int = 200) -> web.Response:
    body = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return web.Response(status=status, text=body, content_type=StsError.CONTENT_TYPE)


def html_page(title: str, text: str, status: int = 200) -> web.Response:
    body = (
        f"<!doctype html><html><head><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return web.Response(status=status, text=body, content_type=PageError.CONTENT_TYPE)
