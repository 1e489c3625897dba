"""Errors meant for the user: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or an impossible request; the message is one complete sentence."""
