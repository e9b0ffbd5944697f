"""The shapes of AWS names and numbers, checked alike in whichever file they are written."""

from __future__ import annotations

import re

# \Z, not $: $ also matches before a final newline, which a TOML string can hold
ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+\Z", re.ASCII)
APPLICATION_ARN = re.compile(r"^arn:aws[\w-]*:sso::\d{12}:application/[\w-]+/[\w-]+\Z", re.ASCII)
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+\Z", re.ASCII)
SESSION_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}\Z", re.ASCII)
ACCOUNT_ID = re.compile(r"^[0-9]{12}\Z", re.ASCII)
#: at most 18 digits: int() of a 5,000-digit string raises ValueError, not ours
WHOLE_NUMBER = re.compile(r"^[0-9]{1,18}\Z")
