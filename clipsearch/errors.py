"""One exception tree for everything clipsearch raises on purpose.

    ClipSearchError
    ├── ConfigError              bad settings or arguments (k < 1, empty query, ...)
    ├── LibraryError             the library directory itself
    │   ├── LibraryNotFoundError     no library at that place (query before index)
    │   ├── NotALibraryError         a file that is not a clipsearch database: never touched
    │   ├── SchemaTooNewError        made by a newer clipsearch
    │   ├── LibraryLockedError       another process is indexing this library
    │   ├── EmptyLibraryError        a library with no images yet
    │   └── NotFoundError            an image id or path the library does not hold
    ├── ModelError               the model
    │   ├── ModelUnavailableError    weights cannot be found or loaded (never random weights)
    │   └── ModelMismatchError       the library was built by another model
    ├── ImageError               one image cannot be read or decoded (the indexer skips it)
    └── IntegrityError           `check` found the database or the cache inconsistent

The CLI turns every one of these into a one-line message and a non-zero exit; nothing else in the
package prints.
"""

from __future__ import annotations


class ClipSearchError(Exception):
    """Base of every error clipsearch raises on purpose."""

    exit_code = 1


class ConfigError(ClipSearchError):
    exit_code = 2


class LibraryError(ClipSearchError):
    pass


class LibraryNotFoundError(LibraryError):
    pass


class NotALibraryError(LibraryError):
    pass


class SchemaTooNewError(LibraryError):
    pass


class LibraryLockedError(LibraryError):
    pass


class EmptyLibraryError(LibraryError):
    pass


class ModelError(ClipSearchError):
    pass


class ModelUnavailableError(ModelError):
    pass


class ModelMismatchError(ModelError):
    pass


class ImageError(ClipSearchError):
    """One file could not be turned into an image; `reason` is a one-line explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class IntegrityError(ClipSearchError):
    pass


class NotFoundError(LibraryError):
    """An image id or path that is not an indexed, live image of the library."""
