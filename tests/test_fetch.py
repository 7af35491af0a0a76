"""allowed_urls checks of engine/fetch.py without a server (the real downloads, redirects and
registrations are in tests/faults/test_url_faults.py)."""

from __future__ import annotations

import re

import pytest

from dagserve.engine.errors import BadRequestError
from dagserve.engine.fetch import (UrlRefused, canonical_url, check_url, file_url_path,
                                   is_internal)

ANY = ("file://.*|http(s)?://.*",)


@pytest.mark.parametrize("url", ["file:///models/%2e%2e/etc/x.mar", "file:///m/..%2Fx.mar",
                                 "http://host/a/%2E%2E/b.mar", "file:///m/%2e%2e%5cx.mar"])
def test_an_encoded_dotdot_is_refused(url):
    with pytest.raises(UrlRefused, match="Relative path is not allowed"):
        check_url(url, ANY)


def test_patterns_match_the_decoded_normalised_url():
    allowed = (r"file:///models/allowed/.*",)
    assert canonical_url("file:///models/allowed//a%20b.mar") == "file:///models/allowed/a b.mar"
    assert str(file_url_path("file:///models/allowed/./a%20b.mar", allowed)) == \
        "/models/allowed/a b.mar"
    with pytest.raises(UrlRefused, match="does not match"):
        check_url("file:///models/other/x.mar", allowed)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "[::1]", "169.254.169.254",
                                  "[fe80::1]", "0.0.0.0", "[::ffff:127.0.0.1]"])
def test_internal_ip_literals_need_a_pattern_naming_them(host):
    with pytest.raises(UrlRefused, match="loopback or link-local"):
        check_url(f"http://{host}:8000/x.mar", ANY)
    naming = rf"http://\[?{re.escape(host.strip('[]'))}\]?:8000/.*"
    check_url(f"http://{host}:8000/x.mar", (naming,))


def test_the_naming_pattern_must_be_the_one_that_matches():
    allowed = (r"http://127\.0\.0\.1:1/only/.*", r"http://[^/]+:2/.*")
    with pytest.raises(UrlRefused, match="loopback"):
        check_url("http://127.0.0.1:2/x.mar", allowed)
    check_url("http://127.0.0.1:1/only/x.mar", allowed)


def test_public_addresses_are_not_internal():
    assert not is_internal("93.184.216.34") and not is_internal("2001:db8::1")
    assert is_internal("127.0.0.1") and is_internal("fe80::1%eth0")


@pytest.mark.parametrize("url", ["", "echo\x00.mar", "file:///a\nb.mar"])
def test_control_characters_are_a_400(url):
    """Found by the API fuzzer: a NUL in the url was a 500."""
    with pytest.raises(BadRequestError):
        check_url(url, ANY)
