#!/usr/bin/env python3
"""Checks that `cargo build --bins` and `cargo test` build the same units.

Cargo resolves features per command: a test build adds the dev-dependencies'
features, and any crate whose features differ is built twice, together with
everything above it (wasmtime, burn). On a cold machine that is a second
~20-minute build. runtime/Cargo.toml pins the features the dev-dependencies
add; this script fails, naming the crates and features, when a change to the
dependencies makes the two feature sets diverge again.

It reads Cargo's unit graph (`--unit-graph`, unstable: enabled the way the
guests' build-std is, with RUSTC_BOOTSTRAP=1) and builds nothing.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The same commands as `make host` and scripts/test.sh.
BUILD = ["cargo", "build", "--release", "--bins"]
TEST = ["cargo", "test", "--release", "--workspace", "--exclude", "mote-sdk", "--no-run"]


def unit_graph(command):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    out = subprocess.run(
        command + ["--unit-graph", "-Z", "unstable-options"],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["units"]


def identities(units):
    """A unit's identity: what it is plus, recursively, what it is built on."""
    memo = {}

    def ident(i):
        if i not in memo:
            u = units[i]
            memo[i] = (
                u["pkg_id"], u["target"]["name"], tuple(u["target"]["kind"]), u["mode"],
                tuple(u["features"]), json.dumps(u["profile"], sort_keys=True),
                tuple(sorted(ident(d["index"]) for d in u["dependencies"])),
            )
        return memo[i]

    return [ident(i) for i in range(len(units))]


def name(unit):
    return unit["pkg_id"].rsplit("#", 1)[-1]


def main():
    build, test = unit_graph(BUILD), unit_graph(TEST)
    build_ids, test_ids = identities(build), identities(test)
    in_test = set(test_ids)
    # Binaries are leaves, built on their own by either command (a test
    # build compiles a crate's binary in test mode unless an integration
    # test runs it): only what they are built on must be shared.
    libraries = [i for i, u in enumerate(build) if "bin" not in u["target"]["kind"]]
    differ = [i for i in libraries if build_ids[i] not in in_test]
    if not differ:
        print(f"feature sets: the {len(libraries)} library and build-script units of "
              "`cargo build --bins` are all shared with `cargo test`")
        return 0
    # The root causes: differing units whose dependencies all match.
    differing = set(differ)
    test_features = {}
    for u in test:
        if u["mode"] == "build":
            test_features.setdefault((name(u), u["target"]["name"]), set()).update(u["features"])
    print("feature sets: `cargo build --bins` and `cargo test` resolve different features;")
    print("the binaries' dependencies would be built twice. Pin these in runtime/Cargo.toml:")
    for i in differ:
        u = build[i]
        if any(d["index"] in differing for d in u["dependencies"]):
            continue
        extra = sorted(test_features.get((name(u), u["target"]["name"]), set()) - set(u["features"]))
        print(f"  {name(u)} ({u['target']['name']}): build has {sorted(u['features'])}, test adds {extra}")
    print(f"({len(differ)} units differ in all)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
