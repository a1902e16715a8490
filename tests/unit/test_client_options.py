"""`unison client` options: with nothing given, the seed's addresses."""

from __future__ import annotations

from unison.client.options import ClientOptions, parse_options


def test_no_args_and_no_environment_give_the_seed_defaults() -> None:
    opts = parse_options([], env={})
    # the seed's client hard-codes these; `unison up` relies on them matching its ports
    assert opts.http == "http://localhost:8003"
    assert opts.zmq == {
        "ad-campaign-dc1": "tcp://localhost:5555",
        "ad-campaign-dc2": "tcp://localhost:5556",
    }
    assert opts.state_port == 8090
    assert opts.state_host == "0.0.0.0"
    assert opts.resync_interval == 5.0
    assert opts.quiet is False
    assert opts.log_level == "INFO"


def test_defaults_are_not_shared_between_parses() -> None:
    # a dict default mutated by one caller must not leak into the next parse
    first = parse_options([], env={})
    first.zmq["extra"] = "tcp://x:1"
    assert "extra" not in parse_options([], env={}).zmq
    assert "extra" not in ClientOptions().zmq
