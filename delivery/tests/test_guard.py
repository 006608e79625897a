"""The SSRF guard: only https to public addresses, checked at save and again at send time."""

from __future__ import annotations

import socket

import pytest

from delivery import guard
from delivery.endpoints import set_endpoint
from delivery.guard import UnsafeTarget, check_url
from delivery.models import Attempt, Delivery, Endpoint
from delivery.sending import build_request
from delivery.tests.support import attempt_now, plain_endpoint, submit
from providers.models import Provider

REFUSED = [
    "https://127.0.0.1/hook",
    "https://10.1.2.3/hook",
    "https://192.168.0.10/hook",
    "https://172.16.5.5/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://100.100.100.200/",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[fd00:ec2::254]/",
    "https://[fe80::1]/",
    "https://0.0.0.0/",
]


@pytest.fixture
def dns(monkeypatch):
    """The system resolver, answering from a table: name -> addresses."""
    table: dict[str, list[str]] = {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in table[host]
        ]

    monkeypatch.setattr(guard.socket, "getaddrinfo", getaddrinfo)
    return table


@pytest.mark.parametrize("url", REFUSED)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(url, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    with pytest.raises(UnsafeTarget):
        check_url(url)


@pytest.mark.parametrize(
    ("addresses", "refused"),
    [
        (["127.0.0.1"], "loopback"),
        (["10.0.0.7"], "private"),
        (["169.254.169.254"], "metadata"),
        (["93.184.215.14", "192.168.1.1"], "private"),  # one bad address is enough
        (["::1"], "loopback"),
    ],
)
def test_a_name_resolving_to_a_private_address_is_refused(settings, dns, addresses, refused):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    dns["hooks.provider.example"] = addresses

    with pytest.raises(UnsafeTarget, match=refused):
        check_url("https://hooks.provider.example/lead")


def test_a_public_name_is_accepted_and_pinned_to_its_checked_address(settings, dns):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    dns["hooks.provider.example"] = ["93.184.215.14"]

    target = check_url("https://hooks.provider.example:8443/lead?x=1")
    request = build_request(target, {})

    assert target.address == "93.184.215.14"
    assert request.url == "https://93.184.215.14:8443/lead?x=1"
    assert request.headers["Host"] == "hooks.provider.example:8443"
    # TLS: SNI and the certificate check use the name, not the address.
    assert request.server_hostname == "hooks.provider.example"


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.provider.example/lead",
        "ftp://hooks.provider.example/",
        "https://u:p@x.example/",
    ],
)
def test_only_https_without_credentials_is_accepted(settings, dns, url):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    dns["hooks.provider.example"] = ["93.184.215.14"]
    dns["x.example"] = ["93.184.215.14"]

    with pytest.raises(UnsafeTarget):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.215.14:0/",
        "https://93.184.215.14:00/hook",
        "https://93.184.215.14:65536/",
        "https://93.184.215.14:-1/",
        "https://93.184.215.14:99999999/",
        "https://93.184.215.14:x/",
    ],
)
def test_a_port_outside_1_to_65535_is_refused(settings, url):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    with pytest.raises(UnsafeTarget, match="invalid port"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("https://93.184.215.14:1/", 1),
        ("https://93.184.215.14:65535/", 65535),
        ("https://93.184.215.14/", 443),
    ],
)
def test_ports_from_1_to_65535_are_accepted(settings, url, port):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False

    assert check_url(url).port == port


def test_the_setting_allows_local_http_targets_for_tests(settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = True

    assert check_url("http://127.0.0.1:8001/hook").address == "127.0.0.1"


@pytest.mark.django_db
def test_an_unsafe_url_is_not_saved(seeded, settings, dns):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    dns["internal.example"] = ["10.0.0.5"]

    with pytest.raises(UnsafeTarget):
        set_endpoint(Provider.objects.get(pk=1), url="https://internal.example/hook")

    assert not Endpoint.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_name_rebound_to_a_private_address_after_saving_is_refused_at_send_time(
    seeded_tx, settings, dns
):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    settings.DELIVERY_RETRY_BASE_SECONDS = 60
    dns["rebind.example"] = ["93.184.215.14"]
    set_endpoint(Provider.objects.get(pk=1), url="https://rebind.example/hook")
    delivery = Delivery.objects.get(lead=submit(1, 1))
    dns["rebind.example"] = ["127.0.0.1"]

    status = attempt_now(delivery.pk)

    assert status == "retrying"
    attempt = Attempt.objects.get(delivery=delivery)
    assert attempt.status_code is None
    assert attempt.error == "refused: rebind.example resolves to 127.0.0.1, a loopback address."


@pytest.mark.django_db(transaction=True)
def test_an_endpoint_written_past_the_guard_is_still_checked_before_sending(seeded_tx, settings):
    settings.ALLOW_PRIVATE_DELIVERY_TARGETS = False
    plain_endpoint(1, url="https://169.254.169.254/latest/meta-data")
    delivery = Delivery.objects.get(lead=submit(1, 1))

    attempt_now(delivery.pk)

    assert "metadata" in Attempt.objects.get(delivery=delivery).error
