"""bench/compare's sweep and latency search, driven by made-up steps instead of load runs:
which rates it tries, what it reports as the peak and as the highest rate under the latency
bound, and the report's tables."""

import importlib.machinery
import importlib.util
import os
import types

import pytest

COMPARE = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "compare")


@pytest.fixture()
def compare():
    loader = importlib.machinery.SourceFileLoader("bench_compare", COMPARE)
    spec = importlib.util.spec_from_loader("bench_compare", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def args(**kw):
    a = dict(sweep_start=500, sweep_max=256000, slo_p99_ms=5.0, slo_bisect=2, sweep_step=10)
    a.update(kw)
    return types.SimpleNamespace(**a)


def server(cap, p99_of_rate):
    """A made-up server: keeps up with every rate up to `cap`, p99 latency as given."""
    tried = []

    def point(s, a, resdir, tag, rate, arch):
        tried.append(rate)
        keeps = rate <= cap
        return {"rate": rate, "keeps_up": keeps, "generator_bound": False, "failed": False,
                "p99_ms": p99_of_rate(rate), "p50_ms": 0.1, "delivered_per_s": rate if keeps else cap,
                "sent_per_s": rate, "server_cpu_pct": 50.0, "gen_cpu_pct": 20.0, "send_lag_p99_ms": 0.2,
                "settled_s": 0.0}
    return point, tried


def test_latency_search_bisects_between_the_steps_that_met_and_missed_the_bound(compare):
    compare.sweep_point, tried = server(181000, lambda r: r / 12000.0)  # 5 ms at 60,000 msg/s
    r = compare.sweep(None, args(), None, "t", False)
    assert r["peak_rate"] == 181000
    # 32,000 met the bound and 64,000 missed it: two geometric bisection steps between them.
    assert tried[-2:] == [45250, 53800]
    assert r["slo_rate"] == 53800
    assert [p["rate"] for p in r["points"] if p.get("slo_step")] == [45250, 53800]


def test_latency_search_halves_below_the_first_rate_and_reports_none_when_nothing_met(compare):
    compare.sweep_point, tried = server(4750, lambda r: 20.0)
    r = compare.sweep(None, args(), None, "t", False)
    assert r["peak_rate"] == 4750
    assert r["slo_rate"] is None
    assert [p["rate"] for p in r["points"] if p.get("slo_step")] == [250, 125, 62]

    compare.sweep_point, tried = server(4750, lambda r: 1.0 if r <= 125 else 20.0)
    r = compare.sweep(None, args(), None, "t", False)
    # 250 missed, 125 met: the search stops halving and bisects up from there.
    assert r["slo_rate"] is not None and 125 <= r["slo_rate"] < 250
    assert tried[len(tried) - 4:len(tried) - 2] == [250, 125]


def test_latency_search_adds_nothing_when_every_step_met_the_bound(compare):
    compare.sweep_point, tried = server(16000, lambda r: 1.0)
    r = compare.sweep(None, args(), None, "t", False)
    assert r["slo_rate"] == 16000
    assert not [p for p in r["points"] if p.get("slo_step")]


def test_latency_search_ignores_steps_not_kept_up_with(compare):
    # Low latency where the server does not keep up (it drops what it cannot deliver) is no pass.
    compare.sweep_point, tried = server(8000, lambda r: 1.0 if r > 8000 else (6.0 if r > 4000 else 1.0))
    r = compare.sweep(None, args(), None, "t", False)
    assert r["slo_rate"] is not None and 4000 <= r["slo_rate"] < 8000


def test_report_has_the_latency_column_and_ratios(compare):
    a = args()
    sweeps = {}
    for name, cap, f in (("strait", 181000, lambda r: r / 12000.0), ("prosody", 4750, lambda r: 20.0),
                         ("ejabberd", 16000, lambda r: 0.6 * r / 1000)):
        compare.sweep_point, _ = server(cap, f)
        sweeps[name] = compare.sweep(None, a, None, "t", False)
    md = compare.sweep_markdown({"sweep/archive-off": sweeps}, ["strait", "prosody", "ejabberd"], a)
    assert "| highest msg/s with p99 < 5 ms | strait/server |" in md
    assert "| strait | 181000 | server |  | 53800 |  |" in md
    # ejabberd met the bound up to 8,000 msg/s: 53,800 / 8,000
    assert "| ejabberd | 16000 | server | 11.31 | 8000 | 6.72 |" in md
    # Prosody met it at no rate tried (the lowest was 62 msg/s)
    assert "| prosody | 4750 | server | 38.11 | below 62 | more than 867.7 |" in md
    assert "| no (latency step) |" in md and "| yes |" in md


class RecordingServer:
    """A made-up server that records being restarted on fresh data."""
    name = "made-up"

    def __init__(self, calls):
        self.calls = calls

    def stop(self):
        self.calls.append("stop")

    def prepare(self, archive, plain):
        self.calls.append(("prepare", archive, plain))

    def start(self):
        self.calls.append("start")


def test_with_archiving_the_latency_steps_start_on_fresh_data(compare, monkeypatch):
    calls = []

    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    compare.sweep_point, tried = server(19050, lambda r: r / 1600.0)  # 5 ms at 8,000 msg/s
    r = compare.sweep(RecordingServer(calls), args(), None, "t", True)
    assert r["slo_rate"] is not None and 4000 <= r["slo_rate"] < 8000
    # Once, before the first latency step, and not again.
    assert calls == ["stop", ("prepare", True, False), "start"]


def test_with_stream_management_the_latency_steps_start_on_fresh_data(compare, monkeypatch):
    # The sweep's overload steps leave what their clients never acknowledged stored for the
    # same accounts: archive off too, the latency steps start over on fresh data (once).
    calls = []

    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    compare.sweep_point, tried = server(19050, lambda r: r / 1600.0)
    r = compare.sweep(RecordingServer(calls), args(gen_sm=True), None, "t", False)
    assert r["slo_rate"] is not None and 4000 <= r["slo_rate"] < 8000
    assert calls == ["stop", ("prepare", False, False), "start"]
    # Without it (and archive off), no restart.
    calls.clear()
    compare.sweep_point, tried = server(19050, lambda r: r / 1600.0)
    compare.sweep(RecordingServer(calls), args(gen_sm=False), None, "t", False)
    assert calls == []


def test_the_message_runs_pass_the_body_size(compare):
    a = args(bench_bin="strait", workdir="/w", accounts=400, concurrency=50, gen_threads=1, pairs=200,
             rate=1000, offline_fraction=0.1, duration=10, body_size=2500, gen_busy_poll=False,
             gen_sm=False, idle_connections=800, idle_hold=10, logins=400)
    s = types.SimpleNamespace(port=15222, pid=1, name="strait", template="/w/t")
    argv = compare.bench_args("messages", s, a, "/w/r.json")
    assert argv[argv.index("--body-size") + 1] == "2500"
    assert "--body-size" not in compare.bench_args("pingpong", s, a, "/w/r.json")
    # --gen-busy-poll reaches the generator of every scenario, and only when asked for.
    assert "--busy-poll" not in argv
    a.gen_busy_poll = True
    for scn in ("messages", "pingpong", "idle", "login-storm"):
        assert "--busy-poll" in compare.bench_args(scn, s, a, "/w/r.json")
    # So does --gen-sm (stream management on every generator connection).
    assert "--sm" not in argv
    a.gen_sm = True
    for scn in ("messages", "pingpong", "idle", "login-storm"):
        assert "--sm" in compare.bench_args(scn, s, a, "/w/r.json")


def test_strait_workers_go_into_its_config_only_when_given(compare):
    a = types.SimpleNamespace(max_connections=100, max_resources=10, max_offline=100, scram_iterations=4096,
                              strait_workers=None, strait_bin="/bin/true")
    assert "workers" not in compare.strait_config("/r", False, False, a, 15222)
    a.strait_workers = 2
    assert "\nworkers = 2\n" in compare.strait_config("/r", False, False, a, 15222)


def test_half_peak_skips_servers_whose_own_peak_is_below_the_rate(compare, monkeypatch):
    class Server:
        def __init__(self, name):
            self.name = name

        def prepare(self, archive, plain):
            pass

        def start(self):
            pass

        def stop(self):
            pass

        def log_warnings(self):
            return 0, None

    ran = []

    def run_bench(scn, s, a, resdir, tag):
        ran.append((s.name, a.run_rate, tag))
        return {"bench": {"results": {"latency_ms": {"p99": 1.0}}}}

    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    monkeypatch.setattr(compare, "run_bench", run_bench)
    monkeypatch.setattr(compare, "run_p99", lambda r: 1.0)
    servers = {n: Server(n) for n in ("strait", "prosody", "ejabberd")}
    swept = {"strait": {"peak_rate": 100000}, "prosody": {"peak_rate": 1650}, "ejabberd": {"peak_rate": 50000}}
    a = types.SimpleNamespace(half_peak_runs=2, run_rate=None, run_offline=None)
    done, skipped = compare.half_peak(servers, swept, a, None, "half-peak/archive-off", False)
    assert skipped == {"prosody": 1650}
    assert sorted(done) == ["ejabberd", "strait"]
    assert ran == [("strait", 50000, "half-peak-archive-off-run1"), ("strait", 50000, "half-peak-archive-off-run2"),
                   ("ejabberd", 50000, "half-peak-archive-off-run1"), ("ejabberd", 50000, "half-peak-archive-off-run2")]
    assert a.run_rate is None
    assert compare.half_peak(servers, {"strait": {}}, a, None, "h", False) == (None, {})


def step(rate, **kw):
    """A measured step as `sweep_point` builds it, before classification: on time by default."""
    pt = {"rate": rate, "failed": False, "delivered_per_s": rate, "sent_per_s": rate, "lost": 0,
          "errors": 0, "p99_ms": 3.0, "send_lag_p99_ms": 0.5, "server_cpu_pct": 60.0,
          "gen_cpu_pct": 40.0}
    pt.update(kw)
    return pt


def test_a_step_on_time_that_delivered_everything_is_kept_up_with(compare):
    pt = compare.classify_step(step(64000), 64000, 1, False)
    assert pt["keeps_up"] and not pt["send_short"] and not pt["generator_bound"]
    assert compare.sweep_verdict(pt, "generator bound") == "keeps up"


def test_late_sends_are_the_generators_limit_only_when_it_used_its_threads(compare):
    # Run AR's step: the server at 112 % of a core, the generator at 75 % of its one thread,
    # its sends late because TCP held its writes back: the server fell behind.
    pushed = compare.classify_step(step(107650, send_lag_p99_ms=180.0, server_cpu_pct=112.0,
                                        gen_cpu_pct=75.0), 107650, 1, False)
    assert not pushed["keeps_up"] and pushed["send_short"] and not pushed["generator_bound"]
    assert compare.sweep_verdict(pushed, "generator bound").startswith("falls behind (it read too slowly")
    # The generator at 95 % of its one thread: its own limit.
    busy = compare.classify_step(step(256000, sent_per_s=230000.0, gen_cpu_pct=95.0), 256000, 1, False)
    assert not busy["keeps_up"] and busy["generator_bound"]
    assert compare.sweep_verdict(busy, "generator bound") == "generator bound"
    # With two threads, 95 % of a core is half of what it has.
    two = compare.classify_step(step(256000, sent_per_s=230000.0, gen_cpu_pct=95.0), 256000, 2, False)
    assert not two["generator_bound"] and two["send_short"]
    # Unknown generator CPU, or a busy-polling generator (always at 100 %): the generator's.
    unknown = compare.classify_step(step(256000, send_lag_p99_ms=80.0, gen_cpu_pct=None), 256000, 1, False)
    assert unknown["generator_bound"]
    polled = compare.classify_step(step(256000, send_lag_p99_ms=80.0, gen_cpu_pct=60.0), 256000, 1, True)
    assert polled["generator_bound"]


def test_a_step_that_lost_or_was_slow_falls_behind_and_a_failed_run_is_neither(compare):
    for kw in ({"lost": 3}, {"errors": 1}, {"p99_ms": 1500.0}, {"delivered_per_s": 60000.0}):
        pt = compare.classify_step(step(64000, **kw), 64000, 1, False)
        assert not pt["keeps_up"] and not pt["generator_bound"], kw
        assert compare.sweep_verdict(pt, "generator bound") == "falls behind", kw
    failed = compare.classify_step(step(64000, failed=True, sent_per_s=None), 64000, 1, False)
    assert not failed["keeps_up"] and not failed["send_short"] and not failed["generator_bound"]
    assert compare.sweep_verdict(failed, "generator bound") == "run failed (see its log)"


def test_a_sweep_stopped_by_the_servers_pushback_is_limited_by_the_server(compare, monkeypatch):
    def point(s, a, resdir, tag, rate, arch):
        late = rate > 64000
        pt = step(rate, send_lag_p99_ms=120.0 if late else 0.5, gen_cpu_pct=70.0,
                  p99_ms=3.0 if rate <= 32000 else 9.0)
        return compare.classify_step(pt, rate, 1, False)
    monkeypatch.setattr(compare, "sweep_point", point)
    monkeypatch.setattr(compare, "slo_search", lambda *x: None)
    sw = compare.sweep(None, args(sweep_start=16000), None, "t", "off")
    assert sw["peak_rate"] >= 64000 and sw["limited_by"] == "server"


def test_the_upload_service_is_turned_off_only_for_a_strait_that_has_one(compare, tmp_path):
    """Strait runs no upload service in the comparison (the others have none); a Strait from
    before the service refuses the section as unknown, so A/B runs against it leave it out."""
    def fake(name, stderr, code):
        path = tmp_path / name
        path.write_text("#!/bin/sh\necho '%s' >&2\nexit %d\n" % (stderr, code))
        path.chmod(0o755)
        return str(path)
    new = fake("strait-new", "", 0)
    old = fake("strait-old", "invalid config: unknown field `upload`, expected one of ...", 1)
    a = types.SimpleNamespace(strait_bin=new, strait_workers=None, max_connections=10,
                              max_resources=10, max_offline=10, scram_iterations=4096)
    assert "[upload]\nenabled = false" in compare.strait_config("/r", True, False, a, 15222)
    a.strait_bin = old
    assert "[upload]" not in compare.strait_config("/r", True, False, a, 15222)
