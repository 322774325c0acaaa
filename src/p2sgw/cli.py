"""The `p2sgw` command: set up the state directory, manage certificates and talk to the running gateway.

Every failure is one red line on stderr and exit code 1; operators script these commands and read their output.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import ipaddress
import json
import os
import socket
import struct
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.filesize import decimal as human_bytes
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url

from p2sgw.addressing import parse_pool_networks
from p2sgw.config import (
    CONFIG_NAME,
    DEFAULT_STATE_DIR,
    MAX_TRUSTED_ROOTS,
    STATE_DIR_ENV,
    GatewayConfig,
    OidcSettings,
    OpenVPNSettings,
    RadiusServer,
    RadiusSettings,
    RevokedCertificate,
    TrustedRoot,
    load_config,
    save_config,
)
from p2sgw.control import ControlError, GatewayNotRunning, control_request
from p2sgw.pki import (
    Pki,
    certificate_pem,
    common_name,
    load_pem_certificate,
    root_info,
    thumbprint,
)
from p2sgw.profiles import openvpn_profile
from p2sgw.store import Store
from p2sgw.store.db import DB_NAME

DEMO_POOL = "172.16.201.0/24"
DEMO_ROUTE = "10.1.0.0/16"
SESSION_FIELDS = (
    "id",
    "identity",
    "protocol",
    "virtual_ip",
    "remote",
    "connected_at",
    "bytes_in",
    "bytes_out",
    "auth_method",
)
PROFILE_TYPES = ("openvpn",)
AUTH_TYPES = ("certificate", "radius", "oidc")
SIOCGIFADDR = 0x8915

app = typer.Typer(
    help="p2sgw: a self-hosted point-to-site VPN gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
client_app = typer.Typer(help="Issue, list and revoke client certificates.", no_args_is_help=True)
ca_app = typer.Typer(help="Trusted root CAs whose client certificates are accepted.", no_args_is_help=True)
app.add_typer(client_app, name="client")
app.add_typer(ca_app, name="ca")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", envvar=STATE_DIR_ENV, help="State directory (config, database, PKI, socket)."),
]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)
    raise typer.Exit(1)


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(' '.join(message.split()))}", soft_wrap=True)


def _friendly(command):
    """Turn any exception from a command into one line on stderr, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except ValidationError as exc:
            _fail("; ".join(_describe_validation_error(e) for e in exc.errors()))
        except Exception as exc:
            _fail(str(exc) or type(exc).__name__)

    return run


def _describe_validation_error(error: dict) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else error["msg"]


def _load(state_dir: Path) -> tuple[GatewayConfig, Pki]:
    config = load_config(state_dir)
    pki = Pki(state_dir)
    if not pki.exists():
        _fail(f"no PKI in {pki.dir}: run 'p2sgw init --force' to recreate it")
    return config, pki


def _notify_gateway(state_dir: Path) -> None:
    """Ask a running gateway to re-read the config now; it also notices the change by itself within seconds."""
    try:
        response = control_request(state_dir, {"op": "reload"})
    except GatewayNotRunning:
        return
    except ControlError as exc:
        _warn(f"could not ask the gateway to reload ({exc}); it picks up the change by itself")
        return
    if not response.get("ok"):
        _warn(f"the gateway refused to reload: {response.get('error', 'no reason given')}")


def _gateway_request(state_dir: Path, request: dict) -> dict:
    response = control_request(state_dir, request)
    if not response.get("ok"):
        _fail(str(response.get("error") or f"the gateway refused {request['op']!r}"))
    return response


def _date(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d}" if value else ""


def _table(*columns: str) -> Table:
    table = Table(*columns, header_style="bold")
    for column in table.columns:
        column.no_wrap = True
    return table


def _print_table(table: Table) -> None:
    """Never squeeze a table when stdout is not a terminal: scripts grep thumbprints out of it."""
    console = out if out.is_terminal else Console(highlight=False, width=max(out.width, 240))
    console.print(table)


# Setup


def _initialise(state_dir: Path, config: GatewayConfig) -> Pki:
    """Create PKI, database and config; the config is written last, so its presence means 'initialised'."""
    parse_pool_networks(config.vpn_client_address_pool)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki = Pki.create(state_dir, config.public_address)
    with Store.for_state_dir(state_dir, config) as store:
        store.clear()  # records of certificates from a previous CA mean nothing now
    save_config(state_dir, config)
    return pki


def _print_summary(state_dir: Path, config: GatewayConfig, pki: Pki) -> None:
    settings = config.openvpn
    transports = [f"{proto}/{port}" for proto, port in (("udp", settings.udp_port), ("tcp", settings.tcp_port)) if port]
    pools = [
        f"{net} (gateway {net.network_address + 1})" for net in parse_pool_networks(config.vpn_client_address_pool)
    ]
    database = (
        make_url(config.database_url).render_as_string(hide_password=True)
        if config.database_url
        else str(state_dir / DB_NAME)
    )
    rows = [
        ("public address", config.public_address),
        ("address pools", ", ".join(pools)),
        ("routes", ", ".join(config.routes) or "(none)"),
        ("DNS servers", ", ".join(config.dns_servers) or "(none)"),
        ("OpenVPN", f"{', '.join(transports)}, {settings.tls_wrap}"),
        ("authentication", ", ".join(config.vpn_auth_types)),
        ("config", str(state_dir / CONFIG_NAME)),
        ("database", database),
        ("CA certificate", f"{pki.ca_cert_path}  (thumbprint {thumbprint(pki.ca_certificate())})"),
        ("server certificate", str(pki.server_cert_path)),
        ("tls-crypt key", str(pki.tls_crypt_key_path)),
        ("client certificates", f"{pki.clients_dir}/"),
        ("control socket", str(state_dir / "control.sock")),
    ]
    if "oidc" in config.vpn_auth_types:
        rows += [
            ("OIDC issuer", config.oidc.effective_issuer()),
            ("OIDC redirect URI", f"{config.oidc_redirect_uri()}  (register it at the identity provider)"),
        ]
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        out.print(f"[bold]{label:<{width}}[/]{escape(value)}", soft_wrap=True)
    out.print(
        "Next: [bold]p2sgw client issue NAME[/], [bold]p2sgw profile NAME --type openvpn -o NAME.ovpn[/], "
        "[bold]p2sgw serve[/]",
        soft_wrap=True,
    )


@app.command()
@_friendly
def init(
    public_address: Annotated[str, typer.Option(help="DNS name or IP clients connect to.")],
    pool: Annotated[list[str], typer.Option(help="Client address pool CIDR (repeatable).")],
    route: Annotated[list[str], typer.Option(help="Network pushed to clients as a route (repeatable).")],
    dns: Annotated[list[str] | None, typer.Option(help="DNS server pushed to clients (repeatable).")] = None,
    auth: Annotated[str, typer.Option(help="Client authentication: certificate, radius, or both (comma-separated).")] = "certificate",
    radius_server: Annotated[list[str] | None, typer.Option(help="RADIUS server HOST[:PORT] (repeatable, in priority order).")] = None,
    radius_secret: Annotated[str | None, typer.Option(help="Shared secret of the RADIUS servers.")] = None,
    oidc_issuer: Annotated[str | None, typer.Option(help="OIDC issuer URL (https), e.g. https://login.microsoftonline.com/TENANT/v2.0.")] = None,
    oidc_client_id: Annotated[str | None, typer.Option(help="OIDC client (application) id registered for the gateway.")] = None,
    oidc_client_secret: Annotated[str | None, typer.Option(help="OIDC client secret (omit for a public client with PKCE).")] = None,
    oidc_allowed_group: Annotated[list[str] | None, typer.Option(help="Only members of this group may sign in (repeatable).")] = None,
    oidc_ca_file: Annotated[Path | None, typer.Option(help="PEM CA bundle for an identity provider with a private CA.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing gateway: new CA, old clients stop working.")] = False,
    udp_port: Annotated[int, typer.Option(help="OpenVPN UDP port (0 disables).")] = 1194,
    tcp_port: Annotated[int, typer.Option(help="OpenVPN TCP port (0 disables).")] = 443,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Create the state directory: config, database, CA, server certificate and tls-crypt key."""
    if (state_dir / CONFIG_NAME).exists() and not force:
        _fail(
            f"{state_dir / CONFIG_NAME} already exists; use --force to replace it "
            "(a new CA is generated and existing client certificates stop working)"
        )
    auth_types = [a.strip() for a in auth.split(",") if a.strip()]
    unknown = [a for a in auth_types if a not in AUTH_TYPES]
    if unknown or not auth_types:
        _fail(f"--auth {auth}: choose from {', '.join(AUTH_TYPES)} (comma-separated)")
    radius = _radius_settings(auth_types, radius_server or [], radius_secret)
    oidc = _oidc_settings(auth_types, oidc_issuer, oidc_client_id, oidc_client_secret, oidc_allowed_group or [],
                          oidc_ca_file)
    for flag, port in (("--udp-port", udp_port), ("--tcp-port", tcp_port)):
        if not 0 <= port <= 65535:
            _fail(f"{flag} {port}: not a port number")
    if not udp_port and not tcp_port:
        _fail("--udp-port and --tcp-port cannot both be 0")
    config = GatewayConfig(
        public_address=public_address,
        vpn_client_address_pool=pool,
        routes=route,
        dns_servers=dns or [],
        vpn_auth_types=auth_types,
        openvpn=OpenVPNSettings(udp_port=udp_port, tcp_port=tcp_port),
        radius=radius,
        oidc=oidc,
    )
    pki = _initialise(state_dir, config)
    out.print(f"[green]Initialised[/] {escape(str(state_dir))}", soft_wrap=True)
    _print_summary(state_dir, config, pki)


def _oidc_settings(auth_types: list[str], issuer: str | None, client_id: str | None, secret: str | None,
                   groups: list[str], ca_file: Path | None) -> OidcSettings:
    if "oidc" not in auth_types:
        if issuer or client_id:
            _fail("--oidc-issuer/--oidc-client-id need --auth oidc")
        return OidcSettings()
    if not issuer or not client_id:
        _fail("--auth oidc needs --oidc-issuer URL and --oidc-client-id ID")
    if ca_file is not None and not ca_file.is_file():
        _fail(f"--oidc-ca-file {ca_file}: no such file")
    tenant = None
    if issuer.startswith(("https://login.microsoftonline.com/", "https://sts.windows.net/")):
        tenant = issuer.rstrip("/").split("/")[3]  # Entra: the tenant id is checked in every token
    return OidcSettings(issuer=issuer, client_id=client_id, client_secret=secret, allowed_groups=groups,
                        ca_file=str(ca_file.resolve()) if ca_file else None, tenant_id=tenant)


def _radius_settings(auth_types: list[str], servers: list[str], secret: str | None) -> RadiusSettings:
    if "radius" not in auth_types:
        if servers:
            _fail("--radius-server needs --auth radius (or certificate,radius)")
        return RadiusSettings()
    if not servers:
        _fail("--auth radius needs at least one --radius-server HOST[:PORT]")
    if not secret:
        _fail("--auth radius needs --radius-secret (or per-server secrets in p2sgw.toml)")
    parsed = []
    for server in servers:
        host, sep, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        if not sep:
            host, port = server, "1812"
        if not port.isdigit() or not 0 < int(port) < 65536:
            _fail(f"--radius-server {server}: expected HOST[:PORT]")
        parsed.append(RadiusServer(address=host, port=int(port)))
    return RadiusSettings(servers=parsed, secret=secret)


@app.command()
@_friendly
def serve(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """Run the gateway in the foreground (initialises a demo setup first if there is no config)."""
    if not (state_dir / CONFIG_NAME).exists():
        config = GatewayConfig(
            public_address=_default_public_address(), vpn_client_address_pool=[DEMO_POOL], routes=[DEMO_ROUTE]
        )
        pki = _initialise(state_dir, config)
        out.print(f"[yellow]No configuration found:[/] initialised {escape(str(state_dir))} with demo defaults", soft_wrap=True)
        _print_summary(state_dir, config, pki)
    from p2sgw.gateway import run_gateway

    raise typer.Exit(run_gateway(state_dir))


def _default_public_address() -> str:
    """The first non-loopback IPv4 address of this machine, else its host name."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # interface without an IPv4 address
                continue
            address = ipaddress.IPv4Address(answer[20:24])
            if not address.is_loopback:
                return str(address)
    return socket.gethostname()


# Client certificates


@client_app.command("issue")
@_friendly
def client_issue(
    name: Annotated[str, typer.Argument(help="Client name, used as certificate CN and session identity.")],
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Issue a client certificate signed by the gateway's CA."""
    config, pki = _load(state_dir)
    with Store.for_state_dir(state_dir, config) as store:
        existing = store.get_client(name)
        if existing is not None and existing.revoked_at is None:
            _fail(f"client {name!r} already exists (thumbprint {existing.thumbprint}); revoke it first")
        revoked = config.revoked_thumbprints() | ({existing.thumbprint} if existing else set())
        issued = pki.issue_client(name, days=days, revoked=revoked)
        store.add_client(issued.name, issued.serial, issued.thumbprint, issued.not_after)
    out.print(f"[green]Issued[/] client certificate for [bold]{escape(name)}[/]", soft_wrap=True)
    out.print(f"thumbprint  {issued.thumbprint}")
    out.print(f"expires     {issued.not_after:%Y-%m-%d %H:%M} UTC")
    out.print(
        f"files       {escape(str(pki.client_cert_path(name)))}, {escape(str(pki.client_key_path(name)))}",
        soft_wrap=True,
    )
    out.print(f"Next: [bold]p2sgw profile {escape(name)} --type openvpn -o {escape(name)}.ovpn[/]", soft_wrap=True)


@client_app.command("list")
@_friendly
def client_list(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """List issued client certificates."""
    config = load_config(state_dir)
    with Store.for_state_dir(state_dir, config) as store:
        clients = store.list_clients()
    if not clients:
        out.print("no clients issued yet")
        return
    table = _table("name", "thumbprint", "expires", "revoked")
    for client in clients:
        table.add_row(escape(client.name), client.thumbprint, _date(client.not_after), _date(client.revoked_at) or "no")
    _print_table(table)


@client_app.command("revoke")
@_friendly
def client_revoke(
    name: Annotated[str, typer.Argument(help="Client to revoke.")],
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Revoke a client certificate; the running gateway ends its sessions."""
    config = load_config(state_dir)
    with Store.for_state_dir(state_dir, config) as store:
        if store.get_client(name) is None:
            _fail(f"no client named {name!r}")
        record = store.mark_revoked(name)
    if record.thumbprint.upper() not in config.revoked_thumbprints():
        config.vpn_client_revoked_certificates.append(RevokedCertificate(name=name, thumbprint=record.thumbprint))
        save_config(state_dir, config)
    _notify_gateway(state_dir)
    out.print(f"[green]Revoked[/] {escape(name)} (thumbprint {record.thumbprint})", soft_wrap=True)


# Trusted roots


@ca_app.command("add")
@_friendly
def ca_add(
    file: Annotated[Path, typer.Argument(help="Root CA certificate (PEM, DER or bare base64).")],
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Trust client certificates issued by another root CA (at most 20 besides the built-in one)."""
    config, pki = _load(state_dir)
    try:
        data = file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
    pem = certificate_pem(load_pem_certificate(data))
    cn, root_thumbprint = root_info(pem)
    if root_thumbprint == thumbprint(pki.ca_certificate()):
        _fail("that is the gateway's built-in CA, which is always trusted")
    roots = config.vpn_client_root_certificates
    duplicate = next((r for r in roots if r.thumbprint.upper() == root_thumbprint), None)
    if duplicate is not None:
        _fail(f"root {root_thumbprint} is already trusted as {duplicate.name!r}")
    if len(roots) >= MAX_TRUSTED_ROOTS:
        _fail(f"already {MAX_TRUSTED_ROOTS} trusted roots, the maximum; remove one first")
    if load_pem_certificate(pem).not_valid_after_utc < dt.datetime.now(dt.UTC):
        _warn("this certificate has expired; clients chaining to it will be refused")
    root = TrustedRoot(name=cn or file.stem, public_cert_data=pem, thumbprint=root_thumbprint)
    roots.append(root)
    save_config(state_dir, config)
    _notify_gateway(state_dir)
    out.print(f"[green]Trusted[/] root {escape(root.name)} (thumbprint {root.thumbprint})", soft_wrap=True)


@ca_app.command("list")
@_friendly
def ca_list(state_dir: StateDir = Path(DEFAULT_STATE_DIR)) -> None:
    """List the built-in CA and the added trusted roots."""
    config, pki = _load(state_dir)
    ca = pki.ca_certificate()
    table = _table("name", "thumbprint", "expires", "source")
    table.add_row(escape(_cn_or(ca, "p2sgw CA")), thumbprint(ca), _date(ca.not_valid_after_utc), "built-in")
    for root in config.vpn_client_root_certificates:
        try:
            expires = _date(load_pem_certificate(root.public_cert_data).not_valid_after_utc)
        except ValueError:
            expires = "unreadable"
        table.add_row(escape(root.name), root.thumbprint, expires, "added")
    _print_table(table)


def _cn_or(cert, fallback: str) -> str:
    return common_name(cert) or fallback


@ca_app.command("remove")
@_friendly
def ca_remove(
    root_id: Annotated[str, typer.Argument(metavar="ID", help="Root name or thumbprint prefix.")],
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Stop trusting an added root CA."""
    config, pki = _load(state_dir)
    needle = root_id.strip()
    if not needle:
        _fail("give a root name or thumbprint prefix")
    roots = config.vpn_client_root_certificates
    matches = [r for r in roots if r.name == needle or r.thumbprint.upper().startswith(needle.upper())]
    if not matches:
        ca = pki.ca_certificate()
        if thumbprint(ca).startswith(needle.upper()) or _cn_or(ca, "") == needle:
            _fail("the built-in CA cannot be removed")
        _fail(f"no trusted root matches {needle!r} (see 'p2sgw ca list')")
    if len(matches) > 1:
        names = ", ".join(f"{r.name} ({r.thumbprint})" for r in matches)
        _fail(f"{needle!r} matches several roots: {names}; give more of the thumbprint")
    roots.remove(matches[0])
    save_config(state_dir, config)
    _notify_gateway(state_dir)
    out.print(f"[green]Removed[/] trusted root {escape(matches[0].name)} ({matches[0].thumbprint})", soft_wrap=True)


# Profiles


@app.command()
@_friendly
def profile(
    name: Annotated[str | None, typer.Argument(help="Issued client name (omit for a username/password profile).")] = None,
    profile_type: Annotated[str, typer.Option("--type", help="Profile type: openvpn.")] = "openvpn",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """Write a client profile with everything inline (it contains the client's private key)."""
    if profile_type not in PROFILE_TYPES:
        _fail(f"--type {profile_type}: supported types are {', '.join(PROFILE_TYPES)}")
    config, pki = _load(state_dir)
    client = None
    if name is not None:
        client = pki.load_client(name)
        if client.thumbprint in config.revoked_thumbprints():
            _fail(f"client {name!r} is revoked; issue a new certificate first")
    elif not {"radius", "oidc"} & set(config.vpn_auth_types) or (
        "certificate" in config.vpn_auth_types and config.auth_combination == "all"
    ):
        _fail("a profile without a client certificate needs --auth radius or oidc (password or browser sign-in)")
    text = openvpn_profile(config, pki, client)
    if output is None:
        typer.echo(text, nl=False)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)
    what = f"contains the private key of {escape(name)}" if name else "username/password sign-in"
    out.print(f"[green]Wrote[/] {escape(str(output))} ({what})", soft_wrap=True)


# Live sessions


@app.command()
@_friendly
def sessions(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """List the sessions of the running gateway."""
    response = _gateway_request(state_dir, {"op": "sessions"})
    rows = [{field: session.get(field) for field in SESSION_FIELDS} for session in response.get("sessions", [])]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no sessions")
        return
    table = _table("id", "identity", "protocol", "virtual IP", "remote", "connected since", "in", "out", "auth")
    for row in rows:
        table.add_row(
            *(escape(str(row[f] or "")) for f in ("id", "identity", "protocol", "virtual_ip", "remote")),
            _since(row["connected_at"]),
            human_bytes(int(row["bytes_in"] or 0)),
            human_bytes(int(row["bytes_out"] or 0)),
            escape(str(row["auth_method"] or "")),
        )
    _print_table(table)


def _since(iso: str | None) -> str:
    try:
        return f"{dt.datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S}"
    except (TypeError, ValueError):
        return escape(str(iso or ""))


@app.command()
@_friendly
def disconnect(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="Session id, e.g. OVPN_<uuid>.")],
    state_dir: StateDir = Path(DEFAULT_STATE_DIR),
) -> None:
    """End a live session."""
    response = control_request(state_dir, {"op": "disconnect", "id": session_id})
    if not response.get("ok"):
        _fail(f"{session_id}: {response.get('error') or 'the gateway refused to disconnect it'}")
    out.print(f"[green]Disconnected[/] {escape(session_id)}", soft_wrap=True)
