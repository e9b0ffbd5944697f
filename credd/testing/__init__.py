"""Test doubles that speak real wire protocols: the strict local AWS emulator
(:mod:`credd.testing.emulator`) and a headless user at a browser
(:mod:`credd.testing.browser`). Used by the test suite and by the demo; never
imported by the daemon itself.
"""
