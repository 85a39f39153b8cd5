"""Where a webhook may go, and how long one attempt may take.

DNS is the edge of the world here: a stub answers the test's names (differently on each
lookup, as a rebinding name does) and leaves every other name to the system. Receivers
are real loopback servers.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from celery import Celery

from shared import migrate, webhooks
from shared.errors import InputError
from shared.queue import celery_config
from shared.webhooks import DEADLINE, DELIVERED, FAILED, REFUSED, check_target, deliver
from tests.conftest import make_settings
from tests.web.helpers import make_job
from tests.webhook_servers import HookServer, make_certificates
from worker.webhooks import retry_delay

PUBLIC = "93.184.215.14"  # a public address; the tests never let a packet go there
TLS_NAME = "hooks.test"


class DnsStub:
    """Answers ``name`` with the next address of ``answers`` (the last one repeats)."""

    def __init__(self, name: str, *answers: str) -> None:
        self.name, self.answers, self.lookups = name, list(answers), 0
        self._system = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != self.name:
            return self._system(host, port, *args, **kwargs)
        address = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sockaddr = (address, int(port), 0, 0) if family == socket.AF_INET6 else (address, port)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


@pytest.fixture
def dns(monkeypatch):
    """Install a DnsStub as the system resolver: ``dns(name, *answers)``."""

    def install(name: str, *answers: str) -> DnsStub:
        stub = DnsStub(name, *answers)
        monkeypatch.setattr(socket, "getaddrinfo", stub)
        return stub

    return install


@pytest.fixture
def no_internet(monkeypatch):
    """Connections to anything but loopback are refused (and recorded): the tests must
    show where a delivery would go without sending a signed POST to the internet."""
    attempts: list[tuple[str, int]] = []
    system = socket.create_connection

    def connect(address, *args, **kwargs):
        attempts.append((address[0], address[1]))
        try:
            outside = not ipaddress.ip_address(address[0]).is_loopback
        except ValueError:  # a name: socket's own lookup (the DNS stub) picks the address
            outside = False
        if outside:
            raise ConnectionRefusedError(f"no internet in the tests ({address[0]})")
        return system(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
    return attempts


@pytest.fixture
def hook_settings(tmp_path):
    return make_settings(tmp_path, f"sqlite:///{tmp_path}/a.db", None, webhook_allow_private=False)


# (address, why it must be refused) — every one must be refused at submit and at delivery
FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("169.254.169.254", "link-local: cloud metadata"),
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:93.184.215.14", "IPv4-mapped, even of a public address"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of the metadata address"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "global-scope multicast"),
    ("2002:7f00:1::", "6to4 of 127.0.0.1"),
    ("2002:a9fe:a9fe::", "6to4 of the metadata address"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo"),
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN, ids=[a for a, _ in FORBIDDEN])
def test_every_internal_address_family_is_refused(dns, hook_settings, address, why):
    dns("inside.test", address)
    with pytest.raises(InputError) as refused:
        check_target("https://inside.test/hook", allow_private=False)
    assert refused.value.field == "webhook", why
    assert deliver(hook_settings, "https://inside.test/hook", b"{}", "completed", "d") == REFUSED


@pytest.mark.parametrize("address", [PUBLIC, "2606:4700::1111", "2002:5db8:d70e::"])
def test_public_addresses_pass(dns, address):
    dns("public.test", address)
    check_target("https://public.test/hook", allow_private=False)


def test_a_name_with_one_internal_answer_is_refused():
    """All answers are checked, not just the first: the connection may use any of them."""

    def both(host, port, **_kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    with pytest.raises(InputError):
        check_target("http://mixed.test/", allow_private=False, resolver=both)


def test_a_rebinding_name_reaches_only_the_address_that_was_checked(
    dns, no_internet, hook_settings
):
    """Public to the check, loopback to a second lookup: there must be no second lookup."""
    inside = HookServer()
    try:
        stub = dns("rebind.test", PUBLIC, "127.0.0.1")
        url = f"http://rebind.test:{inside.port}/hook"
        outcome = deliver(hook_settings, url, b"{}", "completed", "rebind")
    finally:
        inside.close()
    assert inside.requests == []
    assert no_internet == [(PUBLIC, inside.port)]
    assert stub.lookups == 1
    assert outcome == FAILED


def test_a_delivery_speaks_to_the_name_at_the_pinned_address(dns, tmp_path):
    """Host keeps the name while the socket goes to the one address resolved."""
    settings = make_settings(tmp_path, "sqlite://", None, webhook_allow_private=True)
    server = HookServer()
    try:
        stub = dns("hooks.test", "127.0.0.1")
        url = server.url("hooks.test", "/in?x=1")
        assert deliver(settings, url, b'{"a":1}', "start", "pin") == DELIVERED
    finally:
        server.close()
    (request,) = server.requests
    assert request.line == "POST /in?x=1 HTTP/1.1"
    assert request.headers["host"] == f"hooks.test:{server.port}"
    assert request.headers["atelier-event"] == "start" and request.body == b'{"a":1}'
    assert stub.lookups == 1


def test_tls_sends_the_name_as_sni_and_checks_the_certificate_against_it(
    dns, tmp_path, monkeypatch
):
    ca, context = make_certificates(tmp_path, TLS_NAME)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # our CA as the system's trust store
    settings = make_settings(tmp_path, "sqlite://", None, webhook_allow_private=True)
    server = HookServer(tls=context)
    try:
        dns(TLS_NAME, "127.0.0.1")
        assert deliver(settings, server.url(TLS_NAME), b"{}", "start", "tls") == DELIVERED
        dns("other.test", "127.0.0.1")
        assert deliver(settings, server.url("other.test"), b"{}", "start", "tls2") == FAILED
    finally:
        server.close()
    assert server.server_names == [TLS_NAME, "other.test"]
    assert [r.headers["host"] for r in server.requests] == [f"{TLS_NAME}:{server.port}"]
    assert len(server.errors) == 1  # other.test: the client refused hooks.test's certificate


def test_a_dripping_target_is_cut_off_at_the_deadline(tmp_path):
    """A byte a second never trips a per-read timeout; the whole attempt has DEADLINE s."""
    settings = make_settings(tmp_path, "sqlite://", None, webhook_allow_private=True)
    server = HookServer(drip_every=1.0, drip_for=40)
    try:
        started = time.monotonic()
        outcome = deliver(settings, server.url(), b"{}", "start", "drip")
        took = time.monotonic() - started
    finally:
        server.close()
    assert outcome == FAILED
    assert len(server.requests) == 1
    assert DEADLINE - 1.5 < took <= DEADLINE + 1.0, took


def test_redirects_are_not_followed(tmp_path):
    """A public target must not bounce a delivery inside: a 3xx is a failed try."""
    settings = make_settings(tmp_path, "sqlite://", None, webhook_allow_private=True)
    inside = HookServer()
    redirect = HookServer(
        answer=f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {inside.url()}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    try:
        assert deliver(settings, redirect.url(), b"{}", "completed", "r") == FAILED
    finally:
        redirect.close()
        inside.close()
    assert len(redirect.requests) == 1 and inside.requests == []


def test_an_unreachable_broker_leaves_the_event_logged_not_raised(tmp_path, caplog):
    """enqueue runs on a job's thread: with Redis down it logs and lets the job finish."""
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path}/a.db", "redis://127.0.0.1:1/0", webhook_allow_private=True
    )
    migrate.upgrade(settings.database_url)
    job_id = make_job(settings, webhook_url="http://127.0.0.1:9/", webhook_events="completed")
    celery = Celery("unreachable")
    celery.conf.update(celery_config(settings))
    celery.conf.broker_connection_timeout, celery.conf.broker_connection_max_retries = 1, 0
    delivery = webhooks.enqueue(settings, celery, job_id, "completed")
    assert delivery is not None and delivery.event == "completed"
    assert "could not queue the completed webhook" in caplog.text


def test_only_a_failed_completed_is_retried_with_backoff():
    delays = [retry_delay("completed", FAILED, tries, "d") for tries in range(1, 7)]
    assert delays == [2, 4, 8, 16, 32, None]  # six tries in all
    assert retry_delay("start", FAILED, 1, "d") is None
    assert retry_delay("completed", DELIVERED, 1, "d") is None
    assert retry_delay("completed", REFUSED, 1, "d") is None
