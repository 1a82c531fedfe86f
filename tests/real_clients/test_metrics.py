"""The server's metrics as a monitoring system reads them: `GET /metrics` parsed by the
OpenMetrics parser of prometheus_client (the Prometheus project's Python client), which
refuses anything that is not valid OpenMetrics text, after slixmpp logins (one refused) and
messages, so that the counters it reads are the ones real traffic moved.
"""

from __future__ import annotations

import urllib.request

import pytest

from xmpp_helpers import Clients, run

parser = pytest.importorskip("prometheus_client.openmetrics.parser")


def scrape(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                timeout=10) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        text = r.read().decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    return families


def value(families, family, suffix="", default=None, **labels):
    """The sample's value; `default` when the family or the sample is not there yet (a
    labelled counter nothing has moved has no samples)."""
    for s in families[family].samples if family in families else []:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    if default is not None:
        return default
    raise AssertionError(f"no {family}{suffix} {labels} in {families.get(family)}")


def test_metrics_parse_as_openmetrics_and_follow_real_traffic(server, new_account):
    if server.kind != "strait" or not server.metrics_port:
        pytest.skip("strait's /metrics")
    a = new_account(prefix="ma")
    b = new_account(prefix="mb")
    before = scrape(server)
    ok_before = value(before, "strait_logins", "_total", default=0, mechanism="SCRAM-SHA-256",
                      result="success")
    msgs_before = value(before, "strait_client_stanzas", "_total", kind="message")

    async def body():
        async with Clients(server) as cs:
            ca = await cs.online(a, label="A")
            cb = await cs.online(b, label="B")
            for i in range(5):
                ca.send_message(mto=b.jid, mbody=f"metric {i}", mtype="chat")
            await cb.wait_message(lambda m: m["body"] == "metric 4", "the fifth message")
            during = scrape(server)
            assert value(during, "strait_sessions") >= 2
            assert value(during, "strait_client_connections") >= 2
            return during

    during = run(body())
    assert value(during, "strait_logins", "_total", mechanism="SCRAM-SHA-256",
                 result="success") >= ok_before + 2
    assert value(during, "strait_client_stanzas", "_total", kind="message") >= msgs_before + 5
    assert during["strait_logins"].type == "counter"
    assert during["process_cpu_seconds"].type == "counter"
    assert during["strait_store_write_batches_queued"].type == "gauge"
    assert 0 <= value(during, "strait_store_write_batches_queued") < 100
    assert value(during, "process_resident_memory_bytes") > 1_000_000
    assert value(during, "process_start_time_seconds") > 1_700_000_000
    # Anything but /metrics is not found.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/", timeout=10)
    assert e.value.code == 404
