from delivery.tests.conftest import receiver  # noqa: F401 (a fixture: the live delivery test)
