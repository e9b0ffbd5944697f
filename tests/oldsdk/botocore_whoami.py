"""Debian's botocore 1.29 (``python3-botocore``) as a consumer of credd's endpoint.

tests/test_old_sdks.py runs this with the system Python, isolated (``/usr/bin/python3 -I``:
no ``PYTHONPATH``, no user site, not the project's venv), so that ``import botocore`` finds
Debian's package in /usr/lib/python3/dist-packages. It resolves credentials with botocore's
default chain from the environment alone, then proves them with STS GetCallerIdentity
against the URL given as the only argument (botocore 1.29 predates ``AWS_ENDPOINT_URL``).

botocore 1.29's ``ContainerProvider`` (botocore/credentials.py) reads
``AWS_CONTAINER_CREDENTIALS_FULL_URI`` and sends the *value* of
``AWS_CONTAINER_AUTHORIZATION_TOKEN`` as ``Authorization``; it never looks at
``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` (the name appears nowhere in that botocore), which
is why it is here: it works from ``credd env`` only if the token's value is in the environment.

It prints one JSON line: ``{"accessKeyId", "source", "arn", "account", "version"}``, or
``{"failed": "credentials" | "sts", "message", "status"}`` with exit status 3; ``status`` is
the container endpoint's HTTP status (0 if none came). It refuses (exit status 2) to run
with any botocore but Debian's. A failed credential fetch takes about 3 s: botocore 1.29
tries the container endpoint 3 times, 1 s apart.
"""

from __future__ import annotations

import json
import re
import sys

import botocore
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError

#: where apt's python3-botocore lives; a botocore elsewhere (pip's, a newer one) is not the
#: point (tests/support/old_sdks.py names it too: this script imports nothing of the project)
DEBIAN_BOTOCORE = "/usr/lib/python3/dist-packages/botocore/"
#: botocore 1.29 keeps the endpoint's HTTP status only in its message (utils.py, _get_response)
ENDPOINT_STATUS = re.compile(r"non 200 response \((\d{3})\)")


def fail(step: str, error: Exception) -> int:
    status = ENDPOINT_STATUS.search(str(error))
    said = {"failed": step, "message": str(error), "status": int(status[1]) if status else 0}
    print(json.dumps(said))
    return 3


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: botocore_whoami.py STS_URL", file=sys.stderr)
        return 2
    if not botocore.__file__.startswith(DEBIAN_BOTOCORE):
        print(f"not Debian's botocore: {botocore.__file__}", file=sys.stderr)
        return 2
    session = botocore.session.get_session()
    try:
        credentials = session.get_credentials()
    except BotoCoreError as error:
        return fail("credentials", error)
    if credentials is None:
        return fail("credentials", LookupError("botocore's chain found no credentials"))
    sts = session.create_client("sts", endpoint_url=argv[1])
    try:
        identity = sts.get_caller_identity()
    except (BotoCoreError, ClientError) as error:
        return fail("sts", error)
    seen = {
        "accessKeyId": credentials.access_key,
        "source": credentials.method,
        "arn": identity["Arn"],
        "account": identity["Account"],
        "version": botocore.__version__,
    }
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
