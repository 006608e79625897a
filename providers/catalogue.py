"""SPEC §1's seed catalogue, as data."""

SERVICES = [
    (1, "service-1", "Service 1"),
    (2, "service-2", "Service 2"),
    (3, "service-3", "Service 3"),
]
PROVIDERS = [(pk, f"Provider {pk}") for pk in range(1, 9)]
SEED_QUOTA = 10
# service id -> (mandatory provider ids, pool provider ids), each in position order
MEMBERSHIPS = {
    1: ([1], [2, 3, 4]),
    2: ([5], [6, 7, 8]),
    3: ([1, 4], [2, 3, 5, 6, 7, 8]),
}
