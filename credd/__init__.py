"""credd: a local credential daemon for AWS IAM Identity Center and AWS Sign-In."""

__version__ = "0.1.0"
