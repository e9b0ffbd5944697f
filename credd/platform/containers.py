"""``credd container setup [--docker]``: the address containers reach credd on, and port 80.

The container listener (``[containers] listen``, interface.md "Containers")
binds 169.254.170.2, the ECS agent's address, which SDKs accept over plain
HTTP (aws/aws-sdk#562). This module makes that address exist and reachable:

- without ``--docker``, a bridge ``credd0`` holding 169.254.170.2/24, made the
  way the system already makes its links: systemd-networkd ``.netdev`` and
  ``.network`` files where networkd runs, else ``ip`` commands (lost at the
  next boot, which the report explains);
- with ``--docker``, a Docker network ``credd`` whose gateway is 169.254.170.2
  (Docker then holds the address on its own bridge);
- in both cases, port 80 on that address sent on to the listener's port, for
  SDKs that know only ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI``, which means
  ``http://169.254.170.2`` on port 80 (issue 12, item 4). An nftables table of
  its own (``table ip credd``), or iptables rules marked with a comment where
  the system uses iptables. The rule is in two chains: ``prerouting`` for what
  arrives from containers, and ``output`` for this host's own connections,
  which is how :func:`port80_arranged` proves it without root.

A plan (:func:`plan_setup`) is a list of :class:`Step`: what it does, the exact
command or file content, and whether it is already done, looked up in the live
system. Root applies the steps not done (:func:`apply`); a user is shown them
as ``sudo`` commands and nothing changes (:func:`setup`). A second run finds
every step done and says so.

:class:`Target` names what is made and where files go; the defaults are the
real ones, and tests give a bridge, an address, a table and a file root of
their own.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from credd.errors import CreddError
from credd.files.store import atomic_write

#: the ECS agent's address: what ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` is relative to
CONTAINER_ADDRESS = "169.254.170.2"
CONTAINER_PREFIX_LENGTH = 24
#: the container listener's port when ``[containers] listen`` does not say
DEFAULT_LISTEN_PORT = 9912
#: the port RELATIVE_URI implies (``http://169.254.170.2`` has no port)
RELATIVE_URI_PORT = 80
BRIDGE = "credd0"
DOCKER_NETWORK = "credd"
#: the nftables table (``table ip credd``), and the comment on the iptables rules
TABLE = "credd"
COMMAND_TIMEOUT_SECONDS = 30
#: where administrators' tools live: a user's PATH often lacks them, and ``sudo`` has them
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
#: the iptables chains the redirect is in: from containers, and from this host
IPTABLES_CHAINS = ("PREROUTING", "OUTPUT")
#: how often :func:`port80_arranged` re-reads ``/proc/net/tcp`` while it waits
_PROBE_INTERVAL_SECONDS = 0.005


@dataclass(frozen=True)
class Target:
    """What setup makes, and under which root its files are read and written.

    The defaults are the real names; tests give unique ones (another bridge,
    an address in another /24, another table, a temporary ``root``) so that
    they never touch the real ``credd0``, 169.254.170.2 or ``/etc``.
    """

    address: str = CONTAINER_ADDRESS
    prefix_length: int = CONTAINER_PREFIX_LENGTH
    bridge: str = BRIDGE
    docker_network: str = DOCKER_NETWORK
    table: str = TABLE
    root: Path = Path("/")

    @property
    def interface(self) -> str:
        """``169.254.170.2/24``."""
        return f"{self.address}/{self.prefix_length}"

    @property
    def subnet(self) -> str:
        """``169.254.170.0/24``."""
        return str(ipaddress.ip_interface(self.interface).network)

    def path(self, absolute: str) -> Path:
        """``absolute`` (``/etc/...``) under :attr:`root`."""
        return self.root / absolute.lstrip("/")


DEFAULT_TARGET = Target()


@dataclass(frozen=True)
class Step:
    """One thing setup does: a command (``stdin`` fed to it) or a file written.

    ``done`` is looked up in the live system: ``True`` already so, ``False`` to
    do, ``None`` this user cannot tell (the NAT rules are root's to read).
    """

    what: str
    command: tuple[str, ...] = ()
    stdin: str | None = None
    file: Path | None = None
    content: str = ""
    done: bool | None = False

    def shell(self) -> str:
        """The step as a root shell command a user can paste (``sudo``, a here-document)."""
        if self.file is not None:
            return f"sudo tee {shlex.quote(str(self.file))} >/dev/null <<'EOF'\n{self.content}EOF"
        line = "sudo " + shlex.join(self.command)
        if self.stdin is not None:
            return f"{line} <<'EOF'\n{self.stdin}EOF"
        return line


@dataclass(frozen=True)
class Plan:
    """The steps of a setup, what they make, and what the user should know about them."""

    steps: tuple[Step, ...]
    #: one line: what the setup makes (the address, how, and port 80)
    summary: str
    #: persistence, what could not be arranged and why, defaults used
    notes: tuple[str, ...] = ()
    #: why nothing can be applied (Docker is not available), or ``None``
    unavailable: str | None = None
    #: whether the plan redirects port 80 (RELATIVE_URI then works)
    redirects: bool = False

    @property
    def done(self) -> bool:
        return all(step.done is True for step in self.steps)


@dataclass(frozen=True)
class SetupReport:
    """What ``credd container setup`` says, and whether it changed anything."""

    lines: tuple[str, ...]
    changed: bool
    #: a user was shown steps that only root can carry out
    needs_root: bool = False


# ----------------------------------------------------------------------------- the live system


def _search_path(env: Mapping[str, str]) -> str:
    entries = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry]
    return os.pathsep.join([*entries, *(entry for entry in SBIN if entry not in entries)])


def find_tool(name: str, env: Mapping[str, str]) -> str | None:
    """``name`` on ``env``'s PATH, or in an sbin directory."""
    return shutil.which(name, path=_search_path(env))


def _run(
    argv: Sequence[str], env: Mapping[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``argv`` with its output captured; a missing tool or a hang is a :class:`CreddError`."""
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            env={**env, "PATH": _search_path(env), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CreddError(f"{shlex.join(argv)} could not run: {exc}") from exc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


@dataclass(frozen=True)
class Link:
    """A network interface as ``ip -d -j addr show`` describes it."""

    name: str
    kind: str | None
    up: bool
    #: IPv4 addresses with their prefix length (``169.254.170.2/24``)
    addresses: tuple[str, ...]


def links(env: Mapping[str, str]) -> dict[str, Link]:
    """Every interface of this network namespace, by name (``ip`` reads them without root)."""
    ip = find_tool("ip", env)
    if ip is None:
        raise CreddError("ip(8) is not installed", hint="install iproute2")
    done = _run([ip, "-d", "-j", "addr", "show"], env)
    if done.returncode != 0:
        raise CreddError(f"ip addr show failed: {_last_line(done.stderr)}")
    found: dict[str, Link] = {}
    for entry in json.loads(done.stdout or "[]"):
        if not isinstance(entry, dict) or not isinstance(entry.get("ifname"), str):
            continue
        info = entry.get("linkinfo")
        kind = info.get("info_kind") if isinstance(info, dict) else None
        flags = entry.get("flags")
        addresses = tuple(
            f"{address['local']}/{address['prefixlen']}"
            for address in entry.get("addr_info") or []
            if isinstance(address, dict)
            and address.get("family") == "inet"
            and {"local", "prefixlen"} <= address.keys()
        )
        found[entry["ifname"]] = Link(
            name=entry["ifname"],
            kind=kind if isinstance(kind, str) else None,
            up=isinstance(flags, list) and "UP" in flags,
            addresses=addresses,
        )
    return found


def networkd_running(env: Mapping[str, str], root: Path = Path("/")) -> bool:
    """Whether systemd-networkd manages links here, so that its files are the persistent way.

    systemctl's answer when there is a systemd to ask; else networkd's state
    file. Not the directory ``/run/systemd/netif`` alone: the package's
    tmpfiles.d makes it where networkd never ran (a container without systemd).
    """
    systemctl = find_tool("systemctl", env)
    if systemctl is not None:
        state = _run([systemctl, "is-active", "systemd-networkd"], env).stdout.strip()
        if state:  # empty: no systemd to ask ("System has not been booted with systemd")
            return state in {"active", "reloading"}
    return (root / "run/systemd/netif/state").exists()


def redirect_backend(env: Mapping[str, str]) -> str | None:
    """``"nft"``, ``"iptables"``, or ``None`` when neither is installed.

    nftables unless the system's iptables is the legacy one (``iptables -V``
    says ``legacy``): rules are then kept where its other rules are, and saved
    by the tools it saves them with.
    """
    nft = find_tool("nft", env)
    iptables = find_tool("iptables", env)
    if iptables is not None and (nft is None or "legacy" in _run([iptables, "-V"], env).stdout):
        return "iptables"
    return "nft" if nft is not None else None


# ----------------------------------------------------------------------------- the bridge


def networkd_files(target: Target) -> dict[Path, str]:
    """The ``.netdev`` and ``.network`` files that make the bridge at every boot."""
    directory = target.path("/etc/systemd/network")
    netdev = (
        f"# credd container setup: the bridge containers join to reach credd on {target.address}\n"
        "[NetDev]\n"
        f"Name={target.bridge}\n"
        "Kind=bridge\n"
    )
    network = (
        f"# credd container setup: {target.interface} on {target.bridge}, with or without\n"
        "# containers attached; boot does not wait for it to be online\n"
        "[Match]\n"
        f"Name={target.bridge}\n"
        "\n"
        "[Link]\n"
        "RequiredForOnline=no\n"
        "\n"
        "[Network]\n"
        f"Address={target.interface}\n"
        "ConfigureWithoutCarrier=yes\n"
        "LinkLocalAddressing=no\n"
    )
    return {
        directory / f"50-{target.bridge}.netdev": netdev,
        directory / f"50-{target.bridge}.network": network,
    }


def _file_done(path: Path, content: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == content
    except (OSError, UnicodeDecodeError):
        return False


def _bridge_steps(
    target: Target, env: Mapping[str, str], *, networkd: bool
) -> tuple[list[Step], list[str], str]:
    """The steps that make the bridge, the notes about them, and what the summary says."""
    found = links(env)
    holder = next(
        (
            link
            for link in found.values()
            if any(held.split("/")[0] == target.address for held in link.addresses)
        ),
        None,
    )
    if holder is not None and holder.name != target.bridge:
        note = (
            f"{target.address} is already held by {holder.name}: the listener binds it there, "
            f"so no bridge {target.bridge} is made"
        )
        return [], [note], f"{target.address} on {holder.name}"
    bridge = found.get(target.bridge)
    if bridge is not None and bridge.kind != "bridge":
        raise CreddError(
            f"an interface named {target.bridge} exists and is not a bridge "
            f"(it is a {bridge.kind or 'plain interface'})",
            hint=f"remove it (ip link del {target.bridge}) or rename it, then run setup again",
        )
    ready = bridge is not None and target.interface in bridge.addresses and bridge.up
    summary = f"bridge {target.bridge} holding {target.interface}"
    if networkd:
        steps = [
            Step(
                f"write {path.name} for systemd-networkd",
                file=path,
                content=content,
                done=_file_done(path, content),
            )
            for path, content in networkd_files(target).items()
        ]
        steps.append(
            Step(
                f"have systemd-networkd make {target.bridge} from them",
                command=("networkctl", "reload"),
                done=ready and all(step.done for step in steps),
            )
        )
        return steps, [], summary + " (systemd-networkd, kept across reboots)"
    steps = [
        Step(
            f"create the bridge {target.bridge}",
            command=("ip", "link", "add", target.bridge, "type", "bridge"),
            done=bridge is not None,
        ),
        Step(
            f"give {target.bridge} the address {target.interface}",
            command=("ip", "addr", "add", target.interface, "dev", target.bridge),
            done=bridge is not None and target.interface in bridge.addresses,
        ),
        Step(
            f"bring {target.bridge} up",
            command=("ip", "link", "set", target.bridge, "up"),
            done=bridge is not None and bridge.up,
        ),
    ]
    files = " and ".join(path.name for path in networkd_files(target))
    note = (
        f"{target.bridge} lasts until the next boot: systemd-networkd does not run here, so it "
        "was made with ip(8). To keep it, enable systemd-networkd (systemctl enable --now "
        f"systemd-networkd) and run this setup again, which then writes {files}"
    )
    if find_tool("nmcli", env) is not None:
        note += (
            "; or let NetworkManager keep it: nmcli connection add type bridge ifname "
            f"{target.bridge} con-name {target.bridge} ipv4.method manual ipv4.addresses "
            f"{target.interface} ipv6.method disabled"
        )
    note += "; or run the ip commands above at every boot"
    return steps, [note], summary + " (ip, until the next boot)"


def _docker_steps(target: Target, env: Mapping[str, str]) -> tuple[list[Step], str | None]:
    """``docker network create``, done when the network exists as wanted; or why it cannot be."""
    command = (
        "docker", "network", "create",
        "--subnet", target.subnet,
        "--gateway", target.address,
        target.docker_network,
    )  # fmt: skip
    step = Step(
        f"create the Docker network {target.docker_network} (gateway {target.address})",
        command=command,
    )
    docker = find_tool("docker", env)
    if docker is None:
        return [step], "Docker is not available: docker is not installed"
    info = _run([docker, "info", "--format", "{{.ServerVersion}}"], env)
    if info.returncode != 0:
        return [step], f"Docker is not available: {_last_line(info.stderr)}"
    inspect = _run(
        [docker, "network", "inspect", target.docker_network, "--format", "{{json .IPAM.Config}}"],
        env,
    )
    if inspect.returncode != 0:
        return [step], None  # no such network yet
    configs = json.loads(inspect.stdout or "[]") or []
    wanted = {"Subnet": target.subnet, "Gateway": target.address}
    if any(
        isinstance(config, dict) and all(config.get(k) == v for k, v in wanted.items())
        for config in configs
    ):
        return [Step(step.what, command=command, done=True)], None
    have = ", ".join(
        f"subnet {config.get('Subnet')} gateway {config.get('Gateway')}"
        for config in configs
        if isinstance(config, dict)
    )
    return [step], (
        f"the Docker network {target.docker_network} exists with {have or 'no subnet'}, not "
        f"subnet {target.subnet} gateway {target.address}: remove it (docker network rm "
        f"{target.docker_network}) and run setup again"
    )


# ----------------------------------------------------------------------------- port 80


def nft_ruleset(target: Target, listen_port: int) -> str:
    """``table ip credd``, whole: loading it (again) replaces whatever the table held."""
    rule = (
        f"ip daddr {target.address} tcp dport {RELATIVE_URI_PORT} "
        f"dnat to {target.address}:{listen_port}"
    )
    # A DNAT to the address itself rather than "redirect", which goes to the incoming
    # interface's first address: the bridge may hold another one before it.
    return (
        f"# credd container setup: port {RELATIVE_URI_PORT} on {target.address} for SDKs that "
        "know only\n"
        f"# AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, sent on to the container listener's port\n"
        f"table ip {target.table}\n"
        f"delete table ip {target.table}\n"
        f"table ip {target.table} {{\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority -100; policy accept;\n"
        f"\t\t{rule}\n"
        "\t}\n"
        "\tchain output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        f"\t\t{rule}\n"
        "\t}\n"
        "}\n"
    )


def _nft_expected(target: Target, listen_port: int) -> dict[str, tuple[str, list[object]]]:
    """Each chain's hook and rule expressions, as ``nft -j`` lists them."""

    def match(protocol: str, name: str, value: object) -> dict[str, object]:
        left = {"payload": {"protocol": protocol, "field": name}}
        return {"match": {"op": "==", "left": left, "right": value}}

    rule: list[object] = [
        match("ip", "daddr", target.address),
        match("tcp", "dport", RELATIVE_URI_PORT),
        {"dnat": {"addr": target.address, "port": listen_port}},
    ]
    return {"prerouting": ("prerouting", rule), "output": ("output", rule)}


def _nft_table_done(target: Target, listen_port: int, env: Mapping[str, str]) -> bool:
    nft = find_tool("nft", env)
    if nft is None:
        return False
    done = _run([nft, "-j", "list", "table", "ip", target.table], env)
    if done.returncode != 0:
        return False  # no such table
    chains: dict[str, str] = {}
    rules: dict[str, list[list[object]]] = {}
    for item in json.loads(done.stdout).get("nftables", []):
        if "chain" in item:
            chain = item["chain"]
            chains[chain["name"]] = f"{chain.get('type')} {chain.get('hook')}"
        elif "rule" in item:
            rules.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
    expected = _nft_expected(target, listen_port)
    return set(chains) == set(expected) and all(
        chains[name] == f"nat {hook}" and rules.get(name) == [rule]
        for name, (hook, rule) in expected.items()
    )


def iptables_rule(target: Target, listen_port: int, chain: str) -> tuple[str, ...]:
    """The rule's specification, after ``-t nat -A``, ``-C`` or ``-D``."""
    return (
        chain,
        "-d", f"{target.address}/32",
        "-p", "tcp", "--dport", str(RELATIVE_URI_PORT),
        "-m", "comment", "--comment", target.table,
        "-j", "DNAT", "--to-destination", f"{target.address}:{listen_port}",
    )  # fmt: skip


def _iptables_stale(target: Target, listen_port: int, env: Mapping[str, str]) -> list[list[str]]:
    """The specs of this target's rules that send port 80 anywhere else (an old port)."""
    iptables = find_tool("iptables", env)
    stale: list[list[str]] = []
    if iptables is None:
        return stale
    for chain in IPTABLES_CHAINS:
        listed = _run([iptables, "-t", "nat", "-S", chain], env).stdout.splitlines()
        for line in listed:
            words = shlex.split(line)
            marked = "--comment" in words and words[words.index("--comment") + 1] == target.table
            wanted = f"{target.address}:{listen_port}"
            if words[:1] == ["-A"] and marked and wanted not in words:
                stale.append(words[1:])
    return stale


def _redirect_steps(
    target: Target, listen_port: int, env: Mapping[str, str], *, backend: str, as_root: bool
) -> tuple[list[Step], list[str]]:
    what = (
        f"send port {RELATIVE_URI_PORT} on {target.address} to port {listen_port}, from "
        "containers and from this host"
    )
    # Root reads the rules; nobody else may (nfnetlink wants CAP_NET_ADMIN), so a user
    # is shown the steps as done only when a connection proves them.
    proven = None if as_root else (port80_arranged(listen_port, address=target.address) or None)
    if backend == "nft":
        ruleset = nft_ruleset(target, listen_port)
        done = _nft_table_done(target, listen_port, env) if as_root else proven
        steps = [
            Step(
                f"{what} (nftables table ip {target.table})", ("nft", "-f", "-"), ruleset, done=done
            )
        ]
        directory = target.path("/etc/nftables.d")
        if directory.is_dir():
            path = directory / f"{target.table}.nft"
            steps.append(
                Step(
                    f"keep it across reboots in {path}",
                    file=path,
                    content=ruleset,
                    done=_file_done(path, ruleset),
                )
            )
            return steps, []
        return steps, [
            f"the port {RELATIVE_URI_PORT} redirect lasts until the next boot: there is no "
            "/etc/nftables.d here for a file of rules loaded at boot. To keep it, save the "
            f"nft input above as /etc/nftables.d/{target.table}.nft, add include "
            '"/etc/nftables.d/*.nft" to /etc/nftables.conf, and enable nftables.service '
            "(systemctl enable nftables); or run this setup at every boot"
        ]
    steps = []
    if as_root:
        steps += [
            Step(
                f"remove an old redirect ({' '.join(spec)})", ("iptables", "-t", "nat", "-D", *spec)
            )
            for spec in _iptables_stale(target, listen_port, env)
        ]
    iptables = find_tool("iptables", env) or "iptables"
    for chain in IPTABLES_CHAINS:
        spec = iptables_rule(target, listen_port, chain)
        checked = (
            _run([iptables, "-t", "nat", "-C", *spec], env).returncode == 0 if as_root else proven
        )
        steps.append(
            Step(
                f"{what} (iptables, nat {chain})",
                ("iptables", "-t", "nat", "-A", *spec),
                done=checked,
            )
        )
    return steps, [
        f"the port {RELATIVE_URI_PORT} redirect lasts until the next boot unless iptables' "
        "rules are saved: iptables-save > /etc/iptables/rules.v4 (Debian's "
        "iptables-persistent loads that file at boot)"
    ]


def port80_arranged(
    listen_port: int, *, address: str = CONTAINER_ADDRESS, timeout: float = 1.0
) -> bool:
    """Whether a connection to ``address``:80 arrives on ``address``:``listen_port``.

    For the container listener and ``credd container env --relative``: True
    means RELATIVE_URI works. Proven, not guessed, and without root: this
    host connects to port 80 (setup's rule covers this host's connections
    too) and looks in ``/proc/net/tcp`` for the other end of that connection.
    Found on ``listen_port``: arranged; found on port 80 or refused: not.

    When nothing listens on ``listen_port`` (credd not running), the probe
    listens there itself for the millisecond it takes: a daemon that binds in
    that very millisecond is refused (``EADDRINUSE``) that once. False when
    ``address`` is on no interface. Blocks for up to ``timeout`` (in the
    daemon: a worker thread), though the answer takes a millisecond.
    """
    deadline = time.monotonic() + timeout
    own = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            own.bind((address, listen_port))
            own.listen(1)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return False  # no interface holds the address, or a port this user may not bind
        try:
            with socket.create_connection((address, RELATIVE_URI_PORT), timeout=timeout) as client:
                here = client.getsockname()
                while True:
                    other_end = _other_end((here[0], here[1]))
                    if other_end is not None or time.monotonic() >= deadline:
                        return other_end == (address, listen_port)
                    time.sleep(_PROBE_INTERVAL_SECONDS)
        except OSError:
            return False  # refused (no rule, nothing on port 80) or timed out
    finally:
        own.close()


def _other_end(peer: tuple[str, int]) -> tuple[str, int] | None:
    """Where the connection from ``peer`` arrived (its local address), if it is there yet.

    The kernel makes that socket when the SYN arrives, before the client's
    ``connect`` returns, so it is there at the first look but under a SYN flood.
    """
    for local, remote in _tcp_sockets():
        if remote == peer:
            return local
    return None


def _tcp_sockets() -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """(local, remote) of every IPv4 TCP socket of this network namespace (proc(5))."""
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table, None)  # the header
        for line in table:
            fields = line.split()
            if len(fields) > 2:
                yield _proc_address(fields[1]), _proc_address(fields[2])


def _proc_address(text: str) -> tuple[str, int]:
    """``0200FEA9:26B8``: the address as the kernel holds it (native order), the port in hex."""
    address, _, port = text.partition(":")
    return socket.inet_ntoa(struct.pack("=I", int(address, 16))), int(port, 16)


# ----------------------------------------------------------------------------- plan, apply, setup


def plan_setup(
    docker: bool,
    *,
    listen_port: int,
    env: Mapping[str, str],
    target: Target = DEFAULT_TARGET,
    networkd: bool | None = None,
    backend: str | None = None,
    as_root: bool | None = None,
) -> Plan:
    """Every step of the setup, each looked up in the live system.

    ``networkd`` and ``backend`` (``"nft"`` or ``"iptables"``) are found out
    when not given; ``as_root`` (default: whether this process is root) says
    whether the NAT rules can be read.
    """
    root = os.geteuid() == 0 if as_root is None else as_root
    notes: list[str] = []
    unavailable = None
    if docker:
        steps, unavailable = _docker_steps(target, env)
        summary = f"Docker network {target.docker_network} with gateway {target.address}"
    else:
        if networkd is None:
            networkd = networkd_running(env, target.root)
        steps, notes, summary = _bridge_steps(target, env, networkd=networkd)
    chosen = backend if backend is not None else redirect_backend(env)
    if chosen is None:
        notes.append(
            f"port {RELATIVE_URI_PORT} is not redirected: neither nft nor iptables is "
            f"installed, so SDKs that know only AWS_CONTAINER_CREDENTIALS_RELATIVE_URI cannot "
            "reach credd; containers use AWS_CONTAINER_CREDENTIALS_FULL_URI (credd container "
            "env PROFILE). Install nftables and run this setup again to add it"
        )
    else:
        redirect, kept = _redirect_steps(target, listen_port, env, backend=chosen, as_root=root)
        steps += redirect
        notes += kept
        tool = "nftables" if chosen == "nft" else chosen
        summary += f"; port {RELATIVE_URI_PORT} sent to {listen_port} ({tool})"
    return Plan(tuple(steps), summary, tuple(notes), unavailable, redirects=chosen is not None)


def apply(steps: Sequence[Step], env: Mapping[str, str] | None = None) -> list[str]:
    """Carry out the steps not done yet, in order (as root); a line for each.

    A failed command is a :class:`CreddError` naming it and the tool's message;
    the steps before it stay done, and a second run goes on from there.
    """
    env = os.environ if env is None else env
    lines = []
    for step in steps:
        if step.done is True:
            continue
        if step.file is not None:
            step.file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            atomic_write(step.file, step.content.encode(), mode=0o644)
            lines.append(f"{step.what}: wrote {step.file}")
            continue
        program = find_tool(step.command[0], env)
        if program is None:
            raise CreddError(f"cannot {step.what}: {step.command[0]} is not installed")
        done = _run([program, *step.command[1:]], env, step.stdin)
        if done.returncode != 0:
            raise CreddError(
                f"cannot {step.what}: {shlex.join(step.command)} failed: "
                f"{_last_line(done.stderr or done.stdout)}"
            )
        lines.append(f"{step.what}: {shlex.join(step.command)}")
    return lines


def setup(
    docker: bool,
    *,
    listen_port: int,
    env: Mapping[str, str],
    target: Target = DEFAULT_TARGET,
    euid: int | None = None,
    networkd: bool | None = None,
    backend: str | None = None,
) -> SetupReport:
    """``credd container setup``: as root, apply the plan; as a user, show it.

    ``euid`` is for tests, which play a user while running as root; credd
    itself decides by :func:`os.geteuid`. Root with Docker unavailable is a
    :class:`CreddError` of one line.
    """
    as_root = (os.geteuid() if euid is None else euid) == 0
    plan = plan_setup(
        docker,
        listen_port=listen_port,
        env=env,
        target=target,
        networkd=networkd,
        backend=backend,
        as_root=as_root,
    )
    after = [f"note: {note}" for note in plan.notes]
    if plan.redirects:
        when = "" if as_root or plan.done else "once this is done, "
        after.append(
            f"{when}containers may also use AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which "
            f"means port {RELATIVE_URI_PORT} (credd container env PROFILE --relative)"
        )
    if plan.done:
        lines = [f"already set up: {plan.summary}; nothing changed"]
        return SetupReport(tuple(lines + after), changed=False)
    if not as_root:
        lines = [
            "credd container setup changes the network, which takes root: nothing was changed.",
            f"It would make: {plan.summary}. As root, run:",
        ]
        for step in plan.steps:
            if step.done is True:
                lines.append(f"# already done: {step.what}")
            else:
                unknown = " (root can tell whether it is done)" if step.done is None else ""
                lines += [f"# {step.what}{unknown}", step.shell()]
        if plan.unavailable:
            lines.append(f"note: {plan.unavailable}")
        return SetupReport(tuple(lines + after), changed=False, needs_root=True)
    if plan.unavailable:
        raise CreddError(plan.unavailable)
    lines = [f"set up: {plan.summary}", *apply(plan.steps, env)]
    return SetupReport(tuple(lines + after), changed=True)
