"""Test doubles of cloud services, for the tests' local servers (moto, the emulators) to lack nothing
the code under test relies on. Each module's docstring lists what it emulates and what it does not."""
