"""Image and light-field restoration models.

Importing this package registers its families.
"""

from . import epit, mlfsr, serpent  # noqa: F401
