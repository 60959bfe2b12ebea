"""One exception family; each kind maps to its own process exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``. systemd's
``RestartPreventExitStatus=`` lists the codes of errors that a restart cannot fix.
"""


class CryedgeError(Exception):
    """Something the user can act on; the message says what and where."""

    exit_code = 1


class ConfigError(CryedgeError):
    """A configuration file or option is invalid (names the key and the file)."""

    exit_code = 3


class ModelError(CryedgeError):
    """A model file is missing, unreadable, or disagrees with its card or the features."""

    exit_code = 4


class SourceError(CryedgeError):
    """The camera, stream or file cannot be opened or stopped delivering frames."""

    exit_code = 5


class BrokerError(CryedgeError):
    """The MQTT broker refused the connection or cannot be reached."""

    exit_code = 6


class DataError(CryedgeError):
    """An input data file (image, video, labels, calibration set) is unusable."""

    exit_code = 7


class InstallError(CryedgeError):
    """The installed software cannot run here: a CPU without the extensions a native build needs, a
    shared library the distribution has not installed. Reinstalling fixes it; restarting does not."""

    exit_code = 8


EXIT_CODES = {
    cls.__name__: cls.exit_code
    for cls in (CryedgeError, ConfigError, ModelError, SourceError, BrokerError, DataError, InstallError)
}
