"""Files: every path credd uses, and the caches it shares with the AWS CLI and SDKs."""
