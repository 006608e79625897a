"""A password hasher for the test process only (the root conftest.py installs it).

Django's PBKDF2 takes about 0.35 s a password on the 2-core CI machine, and every test with a
staff or admin user paid it once or more. This one is the same algorithm under the same name
with one iteration: a server started as a subprocess (production settings) still checks the
passwords it stores, and then, as after any change of iteration count, stores them again at its
own count on the first sign-in.
"""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FastPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1

    def must_update(self, encoded: str) -> bool:
        # A password a subprocess stored at the full count is checked, never rewritten here.
        return False
