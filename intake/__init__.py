"""How leads come in and are read back: the intake API and form, the read API."""
