"""A real OpenVPN 2.6 server in a lab's gateway namespace: the yardstick for benchmarks and the lab self-check.

It uses its own pool (172.16.202.0/24 unless told otherwise) and ports (UDP 1195, TCP 8443) so it can run next
to p2sgw in one lab. `lab` is a tests/e2e/lab.py `Lab` (duck-typed here so benchmarks need not import the test
package).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REFERENCE_POOL = "172.16.202.0/24"
REFERENCE_PORTS = {"udp": 1195, "tcp": 8443}
ROUTED_NETWORK = "10.1.0.0/24"
SERVER_ADDRESS = "192.0.2.1"  # the lab gateway's address on the client segment

Proto = Literal["udp", "tcp"]


@dataclass(frozen=True)
class ReferencePKI:
    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    tls_crypt_key: Path


@dataclass
class ReferenceServer:
    process: subprocess.Popen
    pki: ReferencePKI
    server_config: Path
    client_profile: Path
    proto: Proto
    port: int
    log_path: Path
    pool: str = REFERENCE_POOL
    management_socket: Path | None = None

    def management(self, command: str, timeout: float = 10) -> str:
        """One command on the management interface; the reply up to its SUCCESS:/ERROR: line or END."""
        if self.management_socket is None:
            raise RuntimeError("the reference server was started without a management interface")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.management_socket))
            sock.sendall(command.encode() + b"\n")
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("management interface closed the connection")
                buffer += chunk
                lines = [line for line in buffer.decode(errors="replace").splitlines() if not line.startswith(">")]
                if lines and (lines[-1] == "END" or lines[-1].startswith(("SUCCESS:", "ERROR:"))) \
                        and buffer.endswith(b"\n"):
                    return "\n".join(lines)

    def client_count(self) -> int:
        """Clients connected right now ("load-stats", cheap even with thousands of clients)."""
        reply = self.management("load-stats")
        for field in reply.split(":", 1)[-1].strip().split(","):
            name, _, value = field.partition("=")
            if name == "nclients":
                return int(value)
        raise ValueError(f"no nclients in {reply!r}")


def many_clients_options(max_clients: int) -> list[str]:
    """Server options for a load test: lift openvpn's limits that would cap it, not tune it.

    One certificate is shared by every load client (duplicate-cn); openvpn's default max-clients is
    1024 and connect-freq-initial answers only 100 initial resets per 10 s."""
    return [f"max-clients {max_clients}", "duplicate-cn", f"connect-freq-initial {max(1000, 10 * max_clients)} 1"]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _certificate(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    usage: Literal["ca", "server", "client"],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    is_ca = usage == "ca"
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=not is_ca,
            key_cert_sign=is_ca,
            crl_sign=is_ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if not is_ca:
        eku = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if usage == "server":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(SERVER_ADDRESS))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def generate_pki(directory: Path) -> ReferencePKI:
    """A throwaway EC P-256 CA with one server and one client certificate, plus a tls-crypt key from openvpn."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("p2sgw reference CA", ca_key, None, ca_key, "ca")
    pki = ReferencePKI(
        directory=directory,
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        tls_crypt_key=directory / "tls-crypt.key",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cn, usage, cert_path, key_path in [
        ("reference-server", "server", pki.server_cert, pki.server_key),
        ("reference-client", "client", pki.client_cert, pki.client_key),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key_path, key)
        cert_path.write_bytes(_certificate(cn, key, ca, ca_key, usage).public_bytes(serialization.Encoding.PEM))
    subprocess.run(["openvpn", "--genkey", "secret", str(pki.tls_crypt_key)], check=True, capture_output=True)
    return pki


def write_server_config(
    pki: ReferencePKI,
    path: Path,
    proto: Proto = "udp",
    port: int | None = None,
    *,
    pool: str = REFERENCE_POOL,
    verb: int = 3,
    extra_options: Sequence[str] = (),
) -> Path:
    network = ipaddress.ip_network(pool)
    routed = ipaddress.ip_network(ROUTED_NETWORK)
    path.write_text(
        "\n".join(
            [
                "dev tun",
                "topology subnet",
                f"server {network.network_address} {network.netmask}",
                f"proto {'udp' if proto == 'udp' else 'tcp-server'}",
                f"port {port or REFERENCE_PORTS[proto]}",
                f'push "route {routed.network_address} {routed.netmask}"',
                "data-ciphers AES-256-GCM",
                f"ca {pki.ca_cert}",
                f"cert {pki.server_cert}",
                f"key {pki.server_key}",
                "dh none",
                f"tls-crypt {pki.tls_crypt_key}",
                "keepalive 10 60",
                f"verb {verb}",
                *extra_options,
                "",
            ]
        )
    )
    return path


def write_client_profile(
    pki: ReferencePKI, path: Path, proto: Proto = "udp", port: int | None = None, remote: str = SERVER_ADDRESS
) -> Path:
    """A self-contained .ovpn (everything inline), like the profiles operators hand out."""

    def inline(tag: str, source: Path) -> str:
        return f"<{tag}>\n{source.read_text().strip()}\n</{tag}>"

    path.write_text(
        "\n".join(
            [
                "client",
                "dev tun",
                f"proto {'udp' if proto == 'udp' else 'tcp-client'}",
                f"remote {remote} {port or REFERENCE_PORTS[proto]}",
                "nobind",
                "remote-cert-tls server",
                "data-ciphers AES-256-GCM",
                "verb 3",
                inline("ca", pki.ca_cert),
                inline("cert", pki.client_cert),
                inline("key", pki.client_key),
                inline("tls-crypt", pki.tls_crypt_key),
                "",
            ]
        )
    )
    return path


def start_reference_server(
    lab,
    directory: Path,
    proto: Proto = "udp",
    timeout: float = 20,
    *,
    pool: str = REFERENCE_POOL,
    verb: int = 3,
    management: bool = False,
    extra_options: Sequence[str] = (),
) -> ReferenceServer:
    """Start openvpn as a server in the lab's gw namespace and wait until it is ready for clients.

    `management` adds a unix-socket management interface (in the lab's runtime directory: socket
    paths are short) for `client_count()`."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = generate_pki(directory / "pki")
    port = REFERENCE_PORTS[proto]
    socket_path = lab.runtime_dir / f"reference-{proto}.sock" if management else None
    options = [*extra_options, *([f"management {socket_path} unix"] if socket_path else [])]
    server_config = write_server_config(pki, directory / f"server-{proto}.conf", proto, port, pool=pool, verb=verb,
                                        extra_options=options)
    client_profile = write_client_profile(pki, directory / f"client-{proto}.ovpn", proto, port)
    lab.add_pool_route(pool)
    log_path = lab.workdir / f"reference-openvpn-{proto}.log"
    process = lab.popen("gw", "openvpn", "--config", server_config, log=log_path)
    lab.wait_for_log(log_path, "Initialization Sequence Completed", timeout, process)  # logged at verb 1 too
    return ReferenceServer(process, pki, server_config, client_profile, proto, port, log_path, str(pool), socket_path)
