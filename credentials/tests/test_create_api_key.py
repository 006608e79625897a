import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from credentials.models import ApiKey
from intake.tests.support import post_lead


def run(*args):
    out = StringIO()
    call_command("create_api_key", *args, stdout=out)
    return out.getvalue()


def test_prints_a_raw_key_last_whose_hash_is_stored_and_which_authenticates(client, seeded):
    output = run("acme")

    raw = output.strip().splitlines()[-1]
    key = ApiKey.objects.get()
    assert key.name == "acme"
    assert key.key_hash == ApiKey.hash_key(raw)
    assert raw not in {key.key_hash, key.key_prefix}
    assert raw.startswith(key.key_prefix)
    assert post_lead(client, key=raw).status_code == 201


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["", "   ", "x" * 121])
def test_refuses_an_empty_or_overlong_name(name):
    with pytest.raises(CommandError):
        run(name)

    assert ApiKey.objects.count() == 0


def test_help_is_the_module_docstring():
    from credentials.management.commands import create_api_key

    assert create_api_key.Command.help == create_api_key.__doc__


def test_a_key_can_have_its_own_rate_limit(client, seeded):
    output = run("marketplace", "--rate-limit", "2000/s")

    key = ApiKey.objects.get()
    assert key.rate_limit == "2000/s"
    assert post_lead(client, key=output.strip().splitlines()[-1]).status_code == 201


@pytest.mark.django_db
@pytest.mark.parametrize("rate", ["fast", "10/d", "1000"])
def test_refuses_a_rate_limit_it_cannot_read(rate):
    with pytest.raises(CommandError, match=re.escape("Use a form like 1000/s, 600/m or 0.")):
        run("acme", "--rate-limit", rate)

    assert ApiKey.objects.count() == 0
