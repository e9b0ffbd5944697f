"""``credd container setup``: shown to a user, applied by root, a no-op the second time.

What the setup makes is real: a bridge, its address, and the port-80 redirect
in nftables or iptables, checked by a connection from a network namespace on
that bridge (a container, for this purpose) to port 80, which must arrive at
a test listener on the listener's port. The root tests never touch what the
machine or another test may own: their bridge is ``cdt`` + a random tag, its
address 169.254.N.2/24 for a random N from 171 (never 169.254.170.2, the
container tests' address, nor 169.254.169.254), their nft table and iptables
comment the bridge's name, and their files go under ``tmp_path``, never
``/etc``. Everything is removed in a ``finally``, however the test ends, and
so is the ``table ip nat`` iptables-nft makes, if it was not there before.

Playing a user needs no root: the module takes ``euid`` for that (credd itself
asks :func:`os.geteuid`), and the CLI tests swap :func:`os.geteuid` so that
``credd container setup`` can only print, even when the suite runs as root.
They plan against the real 169.254.170.2, so they hold the container tests'
lock on it (:func:`tests.support.netns.address_lock`) and skip where the
machine itself holds it: their probe of port 80 then connects nowhere.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from credd.cli import main
from credd.errors import CreddError
from credd.platform import containers
from credd.platform.containers import Target, apply, plan_setup, port80_arranged, setup
from tests.support.home import Home
from tests.support.netns import (
    Bridge,
    Namespace,
    address_lock,
    holder_of,
    ip,
    leftovers,
    new_name,
    require_root_networking,
    skip_if_taken,
)

NOBODY = 65534
#: the ports the tests send port 80 to: below the ephemeral range (32768-), so a
#: listener another test binds to port 0 can never hold one
PORTS = range(20000, 30000)
#: a connection from the namespace to port 80, printing what the listener answered
CLIENT = """\
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=10) as sock:
    sock.sendall(b"ping")
    print(sock.recv(64).decode())
"""


def _port() -> int:
    return PORTS.start + secrets.randbelow(len(PORTS))


def _free_address() -> str:
    """169.254.N.2 in a /24 no interface of this machine is in."""
    held = containers.links(os.environ)
    taken = {address.split(".")[2] for link in held.values() for address in link.addresses}
    for _ in range(100):
        third = 171 + secrets.randbelow(80)
        if str(third) not in taken:
            return f"169.254.{third}.2"
    raise AssertionError("no free 169.254.N.0/24 between 171 and 250")


def _target(root: Path) -> Target:
    name = new_name()
    return Target(address=_free_address(), bridge=name, table=name, root=root)


def _files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


# ----------------------------------------------------------------------------- as a user


def test_a_user_is_shown_the_commands_and_nothing_changes(tmp_path: Path) -> None:
    target = _target(tmp_path)
    report = setup(
        False,
        listen_port=9912,
        env=os.environ,
        target=target,
        euid=NOBODY,
        networkd=False,
        backend="nft",
    )
    text = "\n".join(report.lines)
    assert not report.changed
    assert report.needs_root
    assert "which takes root: nothing was changed" in report.lines[0]
    for line in (
        f"sudo ip link add {target.bridge} type bridge",
        f"sudo ip addr add {target.address}/24 dev {target.bridge}",
        f"sudo ip link set {target.bridge} up",
        "sudo nft -f - <<'EOF'\n" + containers.nft_ruleset(target, 9912) + "EOF",
    ):
        assert line in text, text
    assert f"ip daddr {target.address} tcp dport 80 dnat to {target.address}:9912" in text
    assert "lasts until the next boot" in text  # the bridge made by ip(8) is explained
    assert target.bridge not in containers.links(os.environ)
    assert _files(tmp_path) == []


def test_a_user_is_shown_the_networkd_files_with_their_content(tmp_path: Path) -> None:
    target = _target(tmp_path)
    report = setup(
        False,
        listen_port=9912,
        env=os.environ,
        target=target,
        euid=NOBODY,
        networkd=True,
        backend="iptables",
    )
    text = "\n".join(report.lines)
    network = tmp_path / "etc/systemd/network"
    for path, content in containers.networkd_files(target).items():
        assert f"sudo tee {path} >/dev/null <<'EOF'\n{content}EOF" in text
    assert "sudo networkctl reload" in text
    prerouting = containers.iptables_rule(target, 9912, "PREROUTING")
    assert "sudo iptables -t nat -A " + shlex.join(prerouting) in text
    assert not network.exists()
    assert _files(tmp_path) == []


def test_the_networkd_files_say_what_the_listener_needs(tmp_path: Path) -> None:
    files = containers.networkd_files(Target(root=tmp_path))
    netdev = files[tmp_path / "etc/systemd/network/50-credd0.netdev"]
    network = files[tmp_path / "etc/systemd/network/50-credd0.network"]
    assert "[NetDev]\nName=credd0\nKind=bridge\n" in netdev
    for line in (
        "[Match]\nName=credd0\n",
        "Address=169.254.170.2/24\n",
        "ConfigureWithoutCarrier=yes\n",
        "LinkLocalAddressing=no\n",
        "RequiredForOnline=no\n",  # a bridge without containers must not hold up boot
    ):
        assert line in network


def test_written_networkd_files_are_done_the_next_time(tmp_path: Path) -> None:
    """The files are written under the given root; networkd's reload stays to do (no link)."""
    target = _target(tmp_path)
    plan = plan_setup(
        False, listen_port=9912, env=os.environ, target=target, networkd=True, backend="nft"
    )
    apply([step for step in plan.steps if step.file is not None])
    for path, content in containers.networkd_files(target).items():
        assert path.read_text() == content
        assert path.stat().st_mode & 0o777 == 0o644  # systemd-networkd reads them as its own user
    again = plan_setup(
        False, listen_port=9912, env=os.environ, target=target, networkd=True, backend="nft"
    )
    assert [step.done for step in again.steps if step.file is not None] == [True, True]
    assert [step.command for step in again.steps if step.done is not True] == [
        ("networkctl", "reload"),
        ("nft", "-f", "-"),
    ]


def test_where_nftables_d_exists_the_redirect_is_kept_there(tmp_path: Path) -> None:
    target = _target(tmp_path)
    (tmp_path / "etc/nftables.d").mkdir(parents=True)
    plan = plan_setup(
        False, listen_port=9913, env=os.environ, target=target, networkd=False, backend="nft"
    )
    kept = [step for step in plan.steps if step.file is not None]
    assert [step.file for step in kept] == [tmp_path / f"etc/nftables.d/{target.table}.nft"]
    assert kept[0].content == containers.nft_ruleset(target, 9913)
    assert not any("until the next boot" in note and "redirect" in note for note in plan.notes)


def test_docker_plan_is_the_exact_command_and_docker_missing_is_one_line(tmp_path: Path) -> None:
    target = _target(tmp_path)
    env = {**os.environ, "PATH": str(tmp_path)}  # no docker on this PATH
    plan = plan_setup(True, listen_port=9912, env=env, target=target, backend="nft")
    subnet = target.address.rsplit(".", 1)[0] + ".0/24"
    assert plan.steps[0].command == (
        "docker", "network", "create", "--subnet", subnet, "--gateway", target.address, "credd",
    )  # fmt: skip
    assert plan.unavailable == "Docker is not available: docker is not installed"
    shown = setup(True, listen_port=9912, env=env, target=target, euid=NOBODY, backend="nft")
    text = "\n".join(shown.lines)
    assert f"sudo docker network create --subnet {subnet} --gateway {target.address} credd" in text
    assert "note: Docker is not available: docker is not installed" in shown.lines
    with pytest.raises(CreddError) as refused:  # root: nothing is applied
        setup(True, listen_port=9912, env=env, target=target, euid=0, backend="nft")
    assert str(refused.value) == "Docker is not available: docker is not installed"
    assert holder_of(target.address) is None


def test_docker_without_its_daemon_is_one_line(tmp_path: Path) -> None:
    if _path("docker") is None:
        pytest.skip("the docker CLI is not installed (the test above covers its absence)")
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}  # nothing listens
    plan = plan_setup(True, listen_port=9912, env=env, target=_target(tmp_path), backend="nft")
    assert plan.unavailable is not None
    assert plan.unavailable.startswith("Docker is not available: ")
    assert "docker.sock" in plan.unavailable
    assert "\n" not in plan.unavailable


def test_port_80_is_not_arranged_on_an_address_no_interface_holds() -> None:
    assert port80_arranged(_port(), address=_free_address()) is False


def test_the_command_as_a_user_prints_and_changes_nothing(
    home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _port()
    home.write_credd_config(f'[containers]\nlisten = "169.254.170.2:{port}"\n')
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)  # never root here, whoever runs the suite
    before = set(containers.links(os.environ))
    etc = {path: path.exists() for path in containers.networkd_files(Target())}
    with address_lock():  # its probe of 169.254.170.2 must not meet a container test's daemon
        skip_if_taken()  # nor a real one: with the address absent, it connects nowhere
        main(["container", "setup"])
    out = capsys.readouterr().out
    assert "which takes root: nothing was changed" in out
    if containers.redirect_backend(os.environ) is not None:
        assert f"port 80 sent to {port}" in out  # the port of this config, not the default
    last = out.splitlines()[-1]
    assert last.startswith("or have credd do it: sudo ")
    assert last.endswith(f"--config {home.credd_config} container setup")
    assert ("credd0" in containers.links(os.environ)) == ("credd0" in before)
    assert {path: path.exists() for path in etc} == etc


def test_the_command_says_when_the_listen_port_is_the_default(
    home: Home, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY)
    with address_lock():
        skip_if_taken()
        main(["container", "setup"])
    err = capsys.readouterr().err
    assert "[containers] listen is not set" in err
    assert 'listen = "169.254.170.2:9912"' in err
    assert "its default port" in err


# ----------------------------------------------------------------------------- as root


@dataclass
class Made:
    """What a root test made, so that the ``finally`` can take all of it away."""

    target: Target
    #: whether iptables-nft's ``table ip nat`` was there before the test
    nat_table: bool = False

    def remove(self) -> None:
        ip("link", "del", self.target.bridge, check=False)
        _nft("delete", "table", "ip", self.target.table)
        for chain in containers.IPTABLES_CHAINS:
            for spec in _iptables_rules(chain, self.target.table):
                subprocess.run([_checked_path("iptables"), "-t", "nat", "-D", *spec], check=False)
        if not self.nat_table:
            # iptables-nft made it for the test's rules; its chains go only while empty (the
            # kernel refuses to delete a chain holding a rule), so no one else's rule is lost
            for chain in _nat_chains() or []:
                _nft("delete", "chain", "ip", "nat", chain)
            if _nat_chains() == []:
                _nft("delete", "table", "ip", "nat")


def _nft(*args: str) -> subprocess.CompletedProcess[str] | None:
    nft = _path("nft")
    if nft is None:
        return None
    return subprocess.run([nft, *args], capture_output=True, text=True, check=False)


def _nat_chains() -> list[str] | None:
    """The chains of nftables' ``table ip nat``, or ``None`` when there is no such table."""
    listed = _nft("-j", "list", "table", "ip", "nat")
    if listed is None or listed.returncode != 0:
        return None
    items = json.loads(listed.stdout)["nftables"]
    return [item["chain"]["name"] for item in items if "chain" in item]


def _iptables_rules(chain: str, comment: str) -> list[list[str]]:
    """The specs (after ``-A``) of the rules in nat ``chain`` marked with ``comment``."""
    iptables = _path("iptables")
    if iptables is None:
        return []
    listed = subprocess.run(
        [iptables, "-t", "nat", "-S", chain], capture_output=True, text=True, check=False
    ).stdout
    words = [shlex.split(line) for line in listed.splitlines()]
    return [line[1:] for line in words if line[:1] == ["-A"] and comment in line]


def _rules(backend: str, target: Target) -> str:
    """The redirect as the kernel holds it now, handles included (a replaced rule shows)."""
    if backend == "nft":
        return subprocess.run(
            [_checked_path("nft"), "-a", "list", "table", "ip", target.table],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return json.dumps([_iptables_rules(chain, target.table) for chain in ("PREROUTING", "OUTPUT")])


def _path(tool: str) -> str | None:
    return containers.find_tool(tool, os.environ)


def _checked_path(tool: str) -> str:
    path = _path(tool)
    assert path is not None, f"{tool} is not installed"
    return path


def _ports(rules: str, target: Target) -> list[int]:
    """Every port the rules send ``target.address``:80 to, one per rule."""
    return [int(port) for port in re.findall(rf"{re.escape(target.address)}:(\d+)", rules)]


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Made]:
    require_root_networking()
    made = Made(_target(tmp_path), nat_table=_nat_chains() is not None)
    try:
        yield made
    finally:
        made.remove()
        assert made.target.bridge not in leftovers()


def _require(tool: str) -> None:
    if _path(tool) is None:
        reason = (
            f"{tool} is not installed (apt-get install -y {'nftables' if tool == 'nft' else tool})"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)


def _answer_from_namespace(namespace: Namespace, address: str, listener: socket.socket) -> str:
    """Connect from the namespace to ``address``:80; the listener answers with the peer it saw."""
    client = subprocess.Popen(  # our own interpreter and script
        [
            _checked_path("ip"),
            "netns",
            "exec",
            namespace.name,
            sys.executable,
            "-I",
            "-c",
            CLIENT,
            address,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listener.settimeout(10)
        connection, peer = listener.accept()
        with connection:
            assert connection.recv(16) == b"ping"
            connection.sendall(f"pong to {peer[0]}".encode())
        out, err = client.communicate(timeout=10)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    return out.strip()


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_root_sets_up_once_and_port_80_from_a_container_reaches_the_listener(
    made: Made, backend: str
) -> None:
    _require(backend)
    target = made.target
    port = _port()

    def run(listen_port: int, **kwargs: int) -> containers.SetupReport:
        return setup(
            False,
            listen_port=listen_port,
            env=os.environ,
            target=target,
            networkd=False,
            backend=backend,
            **kwargs,
        )

    first = run(port)
    assert first.changed
    assert first.lines[0].startswith("set up: bridge")
    link = containers.links(os.environ)[target.bridge]
    assert (link.kind, link.up, link.addresses) == ("bridge", True, (target.interface,))
    rules = _rules(backend, target)
    assert _ports(rules, target) == [port, port]  # from containers, and from this host
    assert _files(target.root) == []  # no networkd here: ip(8), and nothing written

    second = run(port)
    assert not second.changed
    assert second.lines[0].startswith("already set up: bridge")
    assert _rules(backend, target) == rules  # the very same rules, not replaced ones
    assert containers.links(os.environ)[target.bridge] == link

    bridge = Bridge(name=target.bridge, address=target.address)
    namespace = Namespace(bridge, address=target.address.rsplit(".", 1)[0] + ".10")
    listener = socket.create_server((target.address, port))
    try:
        namespace.create()
        assert _answer_from_namespace(namespace, target.address, listener) == (
            f"pong to {namespace.address}"  # it came from the container, through port 80
        )
        assert port80_arranged(port, address=target.address)  # from this host, no root needed
        assert not port80_arranged(port + 1, address=target.address)
        # a user cannot read the rules, but the probe proves them: nothing left to show
        as_user = run(port, euid=NOBODY)
        assert as_user.lines[0].startswith("already set up")
        assert not as_user.needs_root
    finally:
        listener.close()
        namespace.delete()

    moved = run(port + 1)  # [containers] listen moved: the redirect follows, once
    assert moved.changed
    assert _ports(_rules(backend, target), target) == [port + 1, port + 1]
    assert port80_arranged(port + 1, address=target.address)  # nothing listens: the probe does


def test_root_refuses_an_interface_of_the_bridge_name_that_is_no_bridge(made: Made) -> None:
    target = made.target
    ip("link", "add", target.bridge, "type", "veth", "peer", "name", new_name())  # both go with it
    with pytest.raises(CreddError, match="exists and is not a bridge"):
        setup(False, listen_port=_port(), env=os.environ, target=target, networkd=False)
    assert containers.links(os.environ)[target.bridge].addresses == ()
