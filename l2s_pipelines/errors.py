"""Exceptions raised for bad user input and unusable models."""


class InputError(ValueError):
    """An input file or argument is unusable; the message names the file and the problem."""


class ModelError(RuntimeError):
    """A model package is missing, corrupt, or incompatible (message names the file)."""
