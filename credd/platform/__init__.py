"""The platform: systemd (sd_notify, socket activation, the user units) and the desktop."""
