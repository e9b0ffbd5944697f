"""The emulator's SigV4 verifier agrees with botocore's signer, and only with it."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from credd.secret import Secret
from credd.testing.emulator import sigv4

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def botocore_signed(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[sigv4.SignedRequest, sigv4.Authorization, str]:
    """What arrives on the wire after botocore signs a request."""
    request = AWSRequest(method, url, data=body, params=params or {}, headers=headers or {})
    SigV4Auth(Credentials("AKIDEXAMPLE", SECRET, "token"), "sts", "eu-west-1").add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    received = CIMultiDict(prepared.headers.items())
    received["Host"] = parts.netloc  # the HTTP client adds it; botocore signed it
    signed = sigv4.SignedRequest(method, parts.path or "/", parts.query, received, body)
    authorization = sigv4.parse_authorization(received["Authorization"])
    return signed, authorization, received["X-Amz-Date"]


def verifies(signed: sigv4.SignedRequest, authorization: sigv4.Authorization, date: str) -> bool:
    expected = sigv4.expected_signature(signed, authorization, date, Secret(SECRET))
    return expected == authorization.signature


@pytest.mark.parametrize(
    ("method", "url", "params", "body"),
    [
        ("POST", "http://127.0.0.1:4000/", None, b"Action=GetCallerIdentity&Version=2011-06-15"),
        ("POST", "http://127.0.0.1:4000/token", {"aws_iam": "t"}, b'{"clientId": "x"}'),
        ("GET", "http://127.0.0.1:4000/a%20b/./c/../d", {"z": "1", "a": "x/y z", "m": ""}, b""),
        ("GET", "http://[::1]:4000/~user/", {"k": "v~-_."}, b""),
    ],
)
def test_matches_botocore(
    method: str, url: str, params: dict[str, str] | None, body: bytes
) -> None:
    signed, authorization, date = botocore_signed(method, url, params=params, body=body)
    assert authorization.scope.service == "sts"
    assert authorization.scope.region == "eu-west-1"
    assert "host" in authorization.signed_headers
    assert verifies(signed, authorization, date)


def test_anything_signed_is_protected() -> None:
    signed, authorization, date = botocore_signed(
        "POST",
        "http://127.0.0.1:4000/",
        body=b"Action=AssumeRole",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    changed_headers = CIMultiDict(signed.headers)
    changed_headers["Content-Type"] = "text/plain"
    unsigned_extra = CIMultiDict(signed.headers)
    unsigned_extra["User-Agent"] = "something else"
    assert not verifies(replace(signed, body=b"Action=AssumeRolf"), authorization, date)
    assert not verifies(replace(signed, headers=changed_headers), authorization, date)
    assert not verifies(replace(signed, raw_query="x=1"), authorization, date)
    assert not verifies(replace(signed, method="PUT"), authorization, date)
    assert verifies(replace(signed, headers=unsigned_extra), authorization, date)


def test_a_dishonest_content_hash_does_not_help() -> None:
    signed, authorization, date = botocore_signed(
        "POST", "http://127.0.0.1:4000/", body=b"a", headers={"X-Amz-Content-SHA256": "0" * 64}
    )
    assert not verifies(signed, authorization, date)


@pytest.mark.parametrize(
    ("header", "complaint"),
    [
        ("AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request", "algorithm"),
        ("AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/sts/aws4_request", "SignedHeaders"),
        (
            "AWS4-HMAC-SHA256 Credential=A/20260101/sts/aws4_request, SignedHeaders=host, "
            "Signature=ab",
            "scoped",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20260101/us-east-1/sts/aws4_request, "
            "SignedHeaders=x-amz-date, Signature=ab",
            "Host",
        ),
    ],
)
def test_malformed_authorization(header: str, complaint: str) -> None:
    with pytest.raises(sigv4.MalformedAuthorization, match=complaint):
        sigv4.parse_authorization(header)


def test_request_time_needs_a_date() -> None:
    with pytest.raises(sigv4.MalformedAuthorization, match="X-Amz-Date"):
        sigv4.request_time(CIMultiDict())
    amz_date, when = sigv4.request_time(CIMultiDict({"Date": "Sat, 21 Nov 2026 05:00:00 GMT"}))
    assert amz_date == "20261121T050000Z"
    assert when.hour == 5
