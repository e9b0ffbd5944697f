"""Configuration: the AWS config and credd's TOML read into frozen settings, and written back."""
